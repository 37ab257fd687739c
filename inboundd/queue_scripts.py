"""The one home of the queue's Redis Lua scripts.

Every multi-step queue operation is one script, so it is atomic, and every
key it touches is passed in ``KEYS`` (all share the ``{prefix}`` hash tag),
so it runs on Redis Cluster too. Scripts that end a lease (ack, retry,
dead-letter, requeue, heartbeat) are *fenced*: they act on an entry only if
it is still pending for the calling consumer (``XPENDING … id id 1
consumer``); otherwise they do nothing and report it, so a consumer whose
lease was reclaimed cannot ack, requeue or duplicate anything.

Works on Redis ≥ 6.2 (XPENDING with a consumer filter, exclusive ranges,
XAUTOCLAIM); no XACKDEL (8.2+) is assumed.
"""

from __future__ import annotations

import redis

__all__ = ["Scripts"]

# Shared Lua prelude: is entry `id` pending for `consumer`?
_OWNED = """
local function owned(stream, group, consumer, id)
  local p = redis.call('XPENDING', stream, group, id, id, 1, consumer)
  return #p == 1
end
"""

#: KEYS: stream · ARGV: group, consumer, id… → one 1/0 per id (1 = acked and deleted).
ACK = _OWNED + """
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
"""

#: KEYS: stream, delayed · ARGV: group, consumer, id, due_ms, payload → 1 scheduled / 0 stale.
RETRY = _OWNED + """
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
"""

#: KEYS: stream, dlq · ARGV: group, consumer, id, maxlen, field, value, … →
#: false when stale, else {dlq_id, evicted…} where each evicted item is the evicted
#: entry's {id, job_id, account, reason} (only when maxlen > 0 and the DLQ was full).
DEAD_LETTER = _OWNED + """
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return false end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
local dlq_id = redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
local res = {dlq_id}
local maxlen = tonumber(ARGV[4])
if maxlen > 0 then
  local excess = redis.call('XLEN', KEYS[2]) - maxlen
  if excess > 0 then
    local old = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', excess)
    for _, entry in ipairs(old) do
      local f = {}
      for j = 1, #entry[2], 2 do f[entry[2][j]] = entry[2][j + 1] end
      redis.call('XDEL', KEYS[2], entry[1])
      res[#res + 1] = {entry[1], f['job_id'] or '', f['account'] or '', f['reason'] or ''}
    end
  end
end
return res
"""

#: KEYS: stream · ARGV: group, consumer, id, payload → the new entry id, or false when stale.
#: Puts a lost job back at the tail of the stream (with its attempt already counted).
REQUEUE = _OWNED + """
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return false end
local new_id = redis.call('XADD', KEYS[1], '*', 'job', ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return new_id
"""

#: KEYS: stream · ARGV: group, consumer, id… → one 1/0 per id (1 = lease extended).
#: XCLAIM … JUSTID to self resets the idle time without raising the delivery count.
HEARTBEAT = _OWNED + """
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
"""

#: KEYS: delayed, stream · ARGV: now_ms, limit → number promoted.
#: Due members move to the stream tail in due-time order (FIFO by due time).
PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'job', member)
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""

#: KEYS: dlq, stream · ARGV: dlq_id, payload, dlq_id, payload, … → number moved.
#: An entry already gone from the DLQ (redriven concurrently) is not added twice.
REDRIVE = """
local moved = 0
for i = 1, #ARGV, 2 do
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[2], '*', 'job', ARGV[i + 1])
    moved = moved + 1
  end
end
return moved
"""

#: KEYS: stream · ARGV: group, consumer → 1 if the consumer had nothing pending and was removed.
FORGET_CONSUMER = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


class Scripts:
    """The scripts registered on one client (EVALSHA, falling back to EVAL once)."""

    def __init__(self, client: redis.Redis) -> None:
        self.ack = client.register_script(ACK)
        self.retry = client.register_script(RETRY)
        self.dead_letter = client.register_script(DEAD_LETTER)
        self.requeue = client.register_script(REQUEUE)
        self.heartbeat = client.register_script(HEARTBEAT)
        self.promote = client.register_script(PROMOTE)
        self.redrive = client.register_script(REDRIVE)
        self.forget_consumer = client.register_script(FORGET_CONSUMER)
