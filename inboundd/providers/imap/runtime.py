"""IMAP in one daemon: the listeners (ingress) and the fetcher (consume time), behind the provider contract."""

from __future__ import annotations

from typing import Any

import msgspec
import trio

from ... import clock
from ...provider import Context, Runtime
from .conn import accounts_from_config
from .fetch import ImapFetcher
from .listener import ImapListenerGroup
from .status import VIEW, normalize_listener

__all__ = ["ImapRuntime"]


class ImapRuntime(Runtime):
    """One listener per (account, folder) of every ``[[imap]]`` account, and the fetcher of their jobs."""

    def __init__(self, ctx: Context) -> None:
        accounts = accounts_from_config(ctx.cfg)
        self.fetcher = ImapFetcher(accounts)
        self.source = self.fetcher
        self.listeners = ImapListenerGroup(
            accounts, queue=ctx.queue, cursors=ctx.cursors, rio=ctx.rio, key_prefix=ctx.key_prefix,
            instance_id=ctx.instance_id, dependencies=ctx.dependencies,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.listeners.run(task_status=task_status)

    async def stop_intake(self) -> None:
        await self.listeners.drain()

    async def resume_intake(self) -> None:
        await self.listeners.resume()

    async def apply_config(self, cfg: Any) -> None:
        accounts = accounts_from_config(cfg)
        self.fetcher.update(accounts)
        await self.listeners.update(accounts)
        self.listeners.kick()  # an auth_failed listener retries at once after a reload

    def readiness(self) -> dict[str, Any]:
        """``imap`` (with accounts configured): fails naming every listener that cannot listen (backoff,
        auth_failed, reconnecting after failures)."""
        return {"imap": self._check_listeners} if self.listeners.summary() else {}

    async def _check_listeners(self) -> None:
        now = clock.wall()
        listeners = [normalize_listener(msgspec.to_builtins(status), now) for status in self.listeners.status()]
        problems = VIEW.problems(listeners)
        if problems:
            raise RuntimeError("; ".join(problems))

    async def status(self) -> dict[str, Any]:
        return {"listeners": [msgspec.to_builtins(listener) for listener in self.listeners.status()]}

    def summary(self) -> str:
        states = self.listeners.summary()
        return "listeners: " + (", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "none")

    async def aclose(self) -> None:
        await self.fetcher.aclose()
