-- KEYS: stream · ARGV: group, consumer, id, payload → the new entry id, or false when stale.
-- Puts a lost job back at the tail of the stream (with its attempt already counted).
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return false end
local new_id = redis.call('XADD', KEYS[1], '*', 'job', ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return new_id
