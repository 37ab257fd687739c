"""Timer work: reclaim expired leases, promote due retries, forget idle consumers; and the timer that runs it.

A job whose worker was lost counts one attempt: the reclaim timer puts it back
at the tail with its attempt counted, or dead-letters it with ``worker_lost``
once it reached ``max_attempts``, so a poison pill that kills its worker ends
in the DLQ instead of looping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis
import trio

from .. import clock, log, metrics
from ..config_schema import QueueConfig
from .base import GROUP, PAGE, Claimed, decode_entry, text
from ..redisio import failure_level
from .leases import Leases

if TYPE_CHECKING:
    from . import Queue

__all__ = ["FORGET_CONSUMER_AFTER", "ReclaimTimer", "Timers"]

_log = log.get_logger("queue")

#: The reclaim timer forgets group members idle this long with nothing pending.
FORGET_CONSUMER_AFTER = 86400.0


class Timers(Leases):
    """The queue's periodic work; :class:`ReclaimTimer` runs it."""

    async def reclaim_expired(self, consumer: str) -> int:
        """XAUTOCLAIM entries idle longer than the lease to *consumer* and recover them."""
        min_idle = int(self.cfg.lease * 1000)

        def autoclaim(client: redis.Redis, start: str) -> tuple[str, list[Claimed]]:
            try:
                reply = client.xautoclaim(self.keys.stream, GROUP, consumer, min_idle, start, count=PAGE)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._ensure_group_sync(client)
                return "0-0", []
            next_start, entries = text(reply[0]), reply[1]
            return next_start, [decode_entry(eid, fields) for eid, fields in entries if eid is not None]

        total, start = 0, "0-0"
        while True:
            start, entries = await self.rio.run(autoclaim, start)
            if entries:
                await self.recover(consumer, entries, why="lease expired")
                total += len(entries)
            if start == "0-0":
                return total

    async def promote_due(self) -> int:
        """Move every due delayed job to the stream tail, in due-time order."""
        total = 0
        while True:
            now = clock.wall_ms()
            n = int(await self.rio.run(lambda client: self.scripts.promote(
                keys=[self.keys.delayed, self.keys.stream], args=[now, PAGE], client=client)))
            total += n
            if n < PAGE:
                break
        if total:
            metrics.jobs_promoted.inc(total)
            log.event(_log, "job.promote", jobs=total)
        return total

    async def forget_idle_consumers(self, idle: float = FORGET_CONSUMER_AFTER) -> int:
        """Remove group members idle longer than *idle* seconds that hold nothing."""

        def run(client: redis.Redis) -> int:
            try:
                members = client.xinfo_consumers(self.keys.stream, GROUP)
            except redis.ResponseError:
                return 0
            removed = 0
            for member in members:
                if member["idle"] >= idle * 1000 and member["pending"] == 0:
                    removed += int(self.scripts.forget_consumer(
                        keys=[self.keys.stream], args=[GROUP, member["name"]], client=client))
            return removed

        removed = await self.rio.run(run)
        if removed:
            log.event(_log, "consumers.forgotten", consumers=removed)
        return removed


class ReclaimTimer:
    """Every ``reclaim_interval``: reclaim expired leases, promote due retries, refresh gauges."""

    def __init__(self, queue: Queue, cfg: QueueConfig, *, consumer: str) -> None:
        self.queue = queue
        self.cfg = cfg
        self.consumer = consumer

    async def tick(self) -> None:
        """One round: its own pending entries first (a previous run died mid-way), then the rest."""
        own = await self.queue.own_pending(self.consumer)
        if own:
            await self.queue.recover(self.consumer, own, why="reclaimer restarted")
        await self.queue.reclaim_expired(self.consumer)
        await self.queue.promote_due()
        await self.queue.refresh_gauges()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run ticks forever; a failing tick (Redis down) is logged and retried next interval."""
        await self.queue.try_ensure_group()
        task_status.started()
        ticks = 0
        while True:
            try:
                await self.tick()
                ticks += 1
                if ticks % 360 == 0:
                    await self.queue.forget_idle_consumers()
            except (redis.RedisError, OSError) as exc:
                log.event(_log, "reclaim.failed", level=failure_level(exc), error=str(exc))
            await trio.sleep(self.cfg.reclaim_interval)
