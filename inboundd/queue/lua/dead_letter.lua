-- KEYS: stream, dlq · ARGV: group, consumer, id, maxlen, field, value, … →
-- false when stale, else {dlq_id, evicted…} where each evicted item is the evicted
-- entry's {id, job_id, account, reason} (only when maxlen > 0 and the DLQ was full).
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return false end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
local dlq_id = redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
local res = {dlq_id}
local maxlen = tonumber(ARGV[4])
if maxlen > 0 then
  local excess = redis.call('XLEN', KEYS[2]) - maxlen
  if excess > 0 then
    local old = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', excess)
    for _, entry in ipairs(old) do
      local f = {}
      for j = 1, #entry[2], 2 do f[entry[2][j]] = entry[2][j + 1] end
      redis.call('XDEL', KEYS[2], entry[1])
      res[#res + 1] = {entry[1], f['job_id'] or '', f['account'] or '', f['reason'] or ''}
    end
  end
end
return res
