-- KEYS: stream · ARGV: group, consumer, count, id… →
-- {{1/0 per id (1 = acked and deleted)}, {entry_id, payload, entry_id, payload, …}}
-- Acks the ids still pending for the consumer (fenced, like ack.lua), then claims up
-- to `count` new entries without blocking: a busy consumer's whole round trip per
-- batch. A payload is false when the entry has no 'job' field.
local flags = ack_each(KEYS[1], ARGV[1], ARGV[2], 4)
local claimed = {}
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
if reply then
  for _, entry in ipairs(reply[1][2]) do
    local payload = false
    local fields = entry[2]
    for j = 1, #fields, 2 do
      if fields[j] == 'job' then payload = fields[j + 1] break end
    end
    claimed[#claimed + 1] = entry[1]
    claimed[#claimed + 1] = payload
  end
end
return {flags, claimed}
