-- Prelude (after owned): ack and delete ARGV[first..] that are pending for `consumer`
-- → one 1/0 per id (1 = acked and deleted, 0 = not ours: the lease moved).
local function ack_each(stream, group, consumer, first)
  local flags = {}
  for i = first, #ARGV do
    local id = ARGV[i]
    if owned(stream, group, consumer, id) then
      redis.call('XACK', stream, group, id)
      redis.call('XDEL', stream, id)
      flags[#flags + 1] = 1
    else
      flags[#flags + 1] = 0
    end
  end
  return flags
end
