-- KEYS: lease · ARGV: value we hold, ttl_ms → 1 extended / 0 not ours (lost or expired).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
