-- KEYS: lease · ARGV: value we hold → 1 still ours / 0 not.
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
