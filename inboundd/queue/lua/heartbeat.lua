-- KEYS: stream · ARGV: group, consumer, id… → one 1/0 per id (1 = lease extended).
-- XCLAIM … JUSTID to self resets the idle time without raising the delivery count.
local res = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  if owned(KEYS[1], ARGV[1], ARGV[2], id) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
    res[#res + 1] = 1
  else
    res[#res + 1] = 0
  end
end
return res
