-- KEYS: dlq, stream · ARGV: dlq_id, payload, dlq_id, payload, … → number moved.
-- An entry already gone from the DLQ (redriven concurrently) is not added twice.
local moved = 0
for i = 1, #ARGV, 2 do
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[2], '*', 'job', ARGV[i + 1])
    moved = moved + 1
  end
end
return moved
