"""A single owner across daemons: a Redis lease with a fencing token.

Keys (built by :func:`lease_keys`, sharing the queue's hash tag, so they live
in the queue's cluster slot)::

    {prefix}:<kind>:lease:<name…>   "<instance>/<incarnation>|<token>", with a PX expiry
    {prefix}:<kind>:fence:<name…>   counter; INCR on every acquisition

* **acquire**: one script — if the lease key is absent, INCR the fence
  counter and ``SET lease "<owner>|<token>" PX ttl``; return the token. If it
  is held, return the remaining PTTL so a standby sleeps exactly until it can
  expire (takeover ≈ ttl after the owner's last renewal, not ttl + a poll).
  With ``take_over_own=True`` a lease held by an earlier life of this same
  daemon instance (same ``instance_id``, another incarnation) is taken at
  once, the token advanced: ``instance_id`` is unique per host and guarded
  by the control-socket lock, so that holder is dead, or a zombie (a paused
  process) that can no longer prove ownership. :mod:`.ownership` always
  asks for it, so every single-owner ingress (IMAP mailboxes, Graph and
  Gmail renewers) resumes at once after a restart.
* **renew**: compare-and-set — ``PEXPIRE`` only if the value is still ours.
* **check** (``still_owner``): right before a write that only the owner may
  make (a cursor), so a paused holder whose lease moved on does not write.
* **release**: compare-and-delete, on clean stop/drain, so a standby takes
  over at once instead of after the ttl.

The token grows with every acquisition, so a holder can prove it is the
newest owner. The scripts live beside the queue's (``queue/lua/lease_*.lua``)
and are loaded by the same loader. :mod:`.ownership` runs work only while a
lease is held.
"""

from __future__ import annotations

import uuid
from typing import Any

import trio

from ..queue import scripts
from ..redisio import RedisIO, tagged_key

__all__ = ["Lease", "lease_keys"]

#: How long a release may take before the lease is left to expire by itself.
RELEASE_TIMEOUT = 1.0


def lease_keys(key_prefix: str, kind: str, *name: str) -> tuple[str, str]:
    """The (lease, fence) keys of the lease on *name* of *kind* (``"imap"``, account, folder)."""
    return tagged_key(key_prefix, kind, "lease", *name), tagged_key(key_prefix, kind, "fence", *name)


class Lease:
    """One lease (*keys* from :func:`lease_keys`), held through a ``RedisIO``.

    *instance* is the daemon's instance id; each ``Lease`` object is a new
    incarnation (``"<instance>/<random>"``), so a restarted daemon is a new
    owner unless it takes over its own leases explicitly. Every method is one
    Redis round trip in a worker thread and raises whatever the Redis client
    raises when Redis is unreachable (but :meth:`release`, which never raises).
    A cancelled call returns at once (its thread is abandoned): each script
    is a compare-and-set on our own value, so a late one changes nothing that
    matters — at worst it keeps a lease of this instance, which this instance
    takes back at its next acquisition.
    """

    def __init__(self, rio: RedisIO, keys: tuple[str, str], *, instance: str, ttl: float) -> None:
        self.rio = rio
        self.ttl = ttl
        self.key, self.fence_key = keys
        self.instance = instance
        self.owner = f"{instance}/{uuid.uuid4().hex[:12]}"
        #: The fencing token while held, else None.
        self.token: int | None = None
        #: ``"<owner>|<token>"`` while held, else None.
        self.value: str | None = None
        #: Whether the last acquisition took the lease over from an earlier life of this instance.
        self.took_over = False
        #: The value (``"<owner>|<token>"``) the last take-over replaced, else None.
        self.taken_from: str | None = None
        client = rio.client
        self._acquire = scripts.register(client, "lease_acquire")
        self._renew = scripts.register(client, "lease_renew")
        self._release = scripts.register(client, "lease_release")
        self._check = scripts.register(client, "lease_check")

    @property
    def ttl_ms(self) -> int:
        return max(int(self.ttl * 1000), 1)

    async def try_acquire(self, *, take_over_own: bool = False) -> float | None:
        """Take the lease if free. ``None`` when held by us now (``token`` is set), else seconds it stays held.

        *take_over_own*: also take it from an earlier incarnation of this
        instance (``took_over`` then says so), with a new token.
        """
        prefix = f"{self.instance}/" if take_over_own else ""
        reply = await self.rio.run(_call, self._acquire, [self.key, self.fence_key],
                                   [self.value or "", self.owner, self.ttl_ms, prefix], abandon_on_cancel=True)
        if int(reply[0]):
            if int(reply[1]) >= 0:
                self.token = int(reply[1])
                self.value = f"{self.owner}|{self.token}"
                self.took_over = bool(int(reply[2]))
                previous = reply[3].decode() if isinstance(reply[3], bytes) else str(reply[3])
                self.taken_from = previous if self.took_over else None
            return None
        self.token, self.value = None, None
        remaining = int(reply[1])
        return remaining / 1000 if remaining > 0 else 0.0

    async def renew(self) -> bool:
        """Extend the lease by ttl if it is still ours; ``False`` when it was lost."""
        if self.value is None:
            return False
        return bool(int(await self.rio.run(_call, self._renew, [self.key], [self.value, self.ttl_ms],
                                           abandon_on_cancel=True)))

    async def still_owner(self) -> bool:
        """Whether the lease is still ours at this moment (used right before a fenced write)."""
        if self.value is None:
            return False
        return bool(int(await self.rio.run(_call, self._check, [self.key], [self.value], abandon_on_cancel=True)))

    def forget(self) -> None:
        """Stop holding without telling Redis (the lease was lost, or can no longer be trusted)."""
        self.token, self.value = None, None

    async def release(self) -> None:
        """Give the lease up if it is still ours. Shielded and bounded (1 s); never raises."""
        value, self.value, self.token = self.value, None, None
        if value is None:
            return
        with trio.move_on_after(RELEASE_TIMEOUT) as scope:
            scope.shield = True
            try:
                await self.rio.run(_call, self._release, [self.key], [value], abandon_on_cancel=True)
            except Exception:
                pass  # it expires by itself within ttl


def _call(client: Any, script: Any, keys: list[str], args: list[Any]) -> Any:
    return script(keys=keys, args=args, client=client)
