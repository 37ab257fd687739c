-- KEYS: lease · ARGV: value we hold → 1 released / 0 not ours (nothing to do).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
