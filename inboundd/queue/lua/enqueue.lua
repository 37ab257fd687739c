-- KEYS: stream · ARGV: payload… → the new entry ids, in ARGV order.
-- One command for a whole batch: the client packs one request instead of one XADD each.
local ids = {}
for i = 1, #ARGV do
  ids[i] = redis.call('XADD', KEYS[1], '*', 'job', ARGV[i])
end
return ids
