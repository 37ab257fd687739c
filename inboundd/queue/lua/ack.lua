-- KEYS: stream · ARGV: group, consumer, id… → one 1/0 per id (1 = acked and deleted).
local res = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  if owned(KEYS[1], ARGV[1], ARGV[2], id) then
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
    res[#res + 1] = 1
  else
    res[#res + 1] = 0
  end
end
return res
