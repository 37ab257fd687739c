-- KEYS: lease, fence · ARGV: value we hold ('' if none), owner, ttl_ms, take-over prefix ('' = never)
-- → {1, token, taken_over, previous value} acquired (token -1: we already hold it, nothing changed)
--   or {0, pttl} held by someone else.
-- A free lease is taken with the next fencing token (INCR fence). A lease held by another life of this
-- same daemon instance (value "<prefix><hex>|<token>": a dead earlier life of it) is taken too, with
-- the token advanced so the old holder can no longer prove ownership; taken_over is then 1. The exact
-- shape is checked, not just the prefix: instance "a" never takes a lease of instance "a/b".
local current = redis.call('GET', KEYS[1])
local taken_over = 0
if current then
  if current == ARGV[1] then return {1, -1, 0, current} end
  local prefix = ARGV[4]
  if prefix == '' or string.sub(current, 1, #prefix) ~= prefix
      or not string.match(string.sub(current, #prefix + 1), '^%x+|%d+$') then
    return {0, redis.call('PTTL', KEYS[1])}
  end
  taken_over = 1
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[2] .. '|' .. token, 'PX', ARGV[3])
return {1, token, taken_over, current or ''}
