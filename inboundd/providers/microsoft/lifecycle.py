"""Lifecycle requests from the webhook to whichever daemon owns the account, through Redis.

A lifecycle event (``missed``, ``subscriptionRemoved``,
``reauthorizationRequired``) may reach any daemon behind the public URL, but
only the account's lease owner acts on it. The webhook records the request
in one Redis hash, ``{prefix}:microsoft:requests``, field
``<account>|<action>|<folder>``, and answers Graph 202 only once Redis
acknowledged it: a request is as durable as a pointer job. The owner takes
the requests of its account (read, then delete, then act: a request recorded
meanwhile is either taken now or stays for the next round) whenever it is
woken: at once by its own daemon's webhook, otherwise by
:meth:`LifecycleRequests.pending_accounts`, which each daemon polls.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ...redisio import RedisIO, tagged_key
from .webhook import LifecycleAction

__all__ = ["LifecycleRequests"]


class LifecycleRequests:
    """The pending lifecycle requests of every account (one Redis hash)."""

    def __init__(self, rio: RedisIO, key_prefix: str) -> None:
        self.rio = rio
        self.key = tagged_key(key_prefix, "microsoft", "requests")

    async def put(self, requests: Iterable[tuple[str, str, LifecycleAction]]) -> None:
        """Record (account, folder, action) requests; returns once Redis acknowledged them."""
        fields = {f"{account}|{action}|{folder}": "1" for account, folder, action in requests}
        if fields:
            await self.rio.run(lambda client: client.hset(self.key, mapping=fields))

    async def pending_accounts(self) -> set[str]:
        """Accounts with requests waiting."""
        fields = await self.rio.run(lambda client: client.hkeys(self.key))
        return {_text(field).split("|", 1)[0] for field in fields}

    async def take(self, account: str) -> list[tuple[str, LifecycleAction]]:
        """Remove and return the (folder, action) requests of *account*."""

        def take(client: Any) -> list[str]:
            mine = [_text(field) for field in client.hkeys(self.key) if _text(field).startswith(f"{account}|")]
            if mine:
                client.hdel(self.key, *mine)
            return mine

        taken = []
        for field in await self.rio.run(take):
            _, action, folder = field.split("|", 2)
            taken.append((folder, action))  # type: ignore[arg-type]
        return taken


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
