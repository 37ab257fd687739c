-- KEYS: lease, fence · ARGV: value we hold ('' if none), owner, ttl_ms, take-over prefix ('' = never)
-- → {1, token, taken_over} acquired (token -1: we already hold it, nothing changed) or {0, pttl} held.
-- A free lease is taken with the next fencing token (INCR fence). A lease held under the take-over
-- prefix (an owner of this same daemon instance, i.e. a dead earlier life of it) is taken too, with
-- the token advanced so the old holder can no longer prove ownership; taken_over is then 1.
local current = redis.call('GET', KEYS[1])
local taken_over = 0
if current then
  if current == ARGV[1] then return {1, -1, 0} end
  if ARGV[4] == '' or string.sub(current, 1, #ARGV[4]) ~= ARGV[4] then
    return {0, redis.call('PTTL', KEYS[1])}
  end
  taken_over = 1
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[2] .. '|' .. token, 'PX', ARGV[3])
return {1, token, taken_over}
