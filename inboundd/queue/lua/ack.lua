-- KEYS: stream · ARGV: group, consumer, id… → one 1/0 per id (1 = acked and deleted).
return ack_each(KEYS[1], ARGV[1], ARGV[2], 3)
