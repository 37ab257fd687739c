-- KEYS: delayed, stream · ARGV: now_ms, limit → number promoted.
-- Due members move to the stream tail in due-time order (FIFO by due time).
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'job', member)
  redis.call('ZREM', KEYS[1], member)
end
return #due
