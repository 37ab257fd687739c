"""One owner per mailbox across daemons: a Redis lease with a fencing token.

Keys (sharing the queue's hash tag, so they live in the queue's cluster slot)::

    {prefix}:imap:lease:<account>:<folder>   "<owner>|<token>", with a PX expiry
    {prefix}:imap:fence:<account>:<folder>   counter; INCR on every acquisition

* **acquire**: one Lua script — if the lease key is absent, INCR the fence
  counter and ``SET lease "<owner>|<token>" PX ttl``; return the token. If it
  is held, return the remaining PTTL so a standby sleeps exactly until it can
  expire (takeover ≈ ttl after the owner's last renewal, not ttl + a poll).
* **renew**: compare-and-set — ``PEXPIRE`` only if the value is still ours.
* **release**: compare-and-delete, on clean stop/drain, so a standby takes
  over at once instead of after the ttl.

The token grows with every acquisition of a mailbox, so a holder can prove
it is the newest owner: the listener checks it (``still_owner``) right
before advancing the cursor, and its lease clock stops it from listening as
soon as it can no longer be sure (see ``imap_proto.LeaseClock``).
"""

from __future__ import annotations

import uuid
from typing import Any

import trio

__all__ = ["MailboxLease", "lease_keys"]

_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current then
  if current == ARGV[1] then return {1, -1} end
  return {0, redis.call('PTTL', KEYS[1])}
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[2] .. '|' .. token, 'PX', ARGV[3])
return {1, token}
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_CHECK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""


def lease_keys(key_prefix: str, account: str, folder: str) -> tuple[str, str]:
    """The (lease, fence) keys of one mailbox."""
    tag = "{" + key_prefix + "}"
    return f"{tag}:imap:lease:{account}:{folder}", f"{tag}:imap:fence:{account}:{folder}"


class MailboxLease:
    """The lease on one (account, folder), held through a ``RedisIO``.

    Every method is one Redis round trip in a worker thread (``rio.run``) and
    raises whatever the Redis client raises when Redis is unreachable.
    """

    def __init__(self, rio: Any, key_prefix: str, account: str, folder: str, *, owner: str, ttl: float) -> None:
        self.rio = rio
        self.ttl = ttl
        self.key, self.fence_key = lease_keys(key_prefix, account, folder)
        #: Unique per listener incarnation: a restarted daemon is a new owner.
        self.owner = f"{owner}/{uuid.uuid4().hex[:12]}"
        self.token: int | None = None
        self.value: str | None = None

    @property
    def ttl_ms(self) -> int:
        return max(int(self.ttl * 1000), 1)

    async def try_acquire(self) -> float | None:
        """Take the lease if free. Returns ``None`` when acquired (``token`` is set), else seconds it stays held."""
        acquired, number = await self.rio.run(
            _eval, _ACQUIRE, [self.key, self.fence_key], [self.value or "", self.owner, self.ttl_ms]
        )
        if int(acquired):
            if int(number) >= 0:
                self.token = int(number)
                self.value = f"{self.owner}|{self.token}"
            return None
        self.token, self.value = None, None
        remaining = int(number)
        return remaining / 1000 if remaining > 0 else 0.0

    async def renew(self) -> bool:
        """Extend the lease by ttl if it is still ours; ``False`` when it was lost."""
        if self.value is None:
            return False
        return bool(int(await self.rio.run(_eval, _RENEW, [self.key], [self.value, self.ttl_ms])))

    async def still_owner(self) -> bool:
        """Whether the lease is still ours at this moment (used right before a cursor write)."""
        if self.value is None:
            return False
        return bool(int(await self.rio.run(_eval, _CHECK, [self.key], [self.value])))

    async def release(self) -> None:
        """Give the lease up if it is still ours. Shielded and bounded (1 s); never raises."""
        value, self.value, self.token = self.value, None, None
        if value is None:
            return
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            try:
                await self.rio.run(_eval, _RELEASE, [self.key], [value])
            except Exception:
                pass  # it expires by itself within ttl


def _eval(client: Any, script: str, keys: list[str], args: list[Any]) -> Any:
    return client.eval(script, len(keys), *keys, *args)
