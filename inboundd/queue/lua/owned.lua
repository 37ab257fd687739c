-- Prelude of the fenced scripts: is entry `id` pending for `consumer`?
local function owned(stream, group, consumer, id)
  local p = redis.call('XPENDING', stream, group, id, id, 1, consumer)
  return #p == 1
end
