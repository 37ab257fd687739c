"""Timer work: reclaim expired leases, promote due retries, forget idle consumers; and the timer that runs it.

A job whose worker was lost counts one attempt: the reclaim timer puts it back
at the tail with its attempt counted, or dead-letters it with ``worker_lost``
once it reached ``max_attempts``, so a poison pill that kills its worker ends
in the DLQ instead of looping.

Due retries are promoted when the earliest of them is due, not on the next
``reclaim_interval`` tick: a retry's delay is what it waits (a retry 2 s out
once waited up to 12 s). The promoter sleeps until the earliest due time in
the delayed set (at most ``reclaim_interval``, which also bounds how late a
retry scheduled by another daemon can be noticed), and a retry this process
schedules sooner wakes it.
"""

from __future__ import annotations

import logging
import math
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

    async def next_due(self) -> float | None:
        """Wall time (seconds) the earliest delayed job is due, or None when none waits."""
        first = await self.rio.run(lambda client: client.zrange(self.keys.delayed, 0, 0, withscores=True))
        return first[0][1] / 1000 if first else None

    def expect_retries(self) -> None:
        """From now until :meth:`sleep_until_due`, any retry this process schedules ends that sleep at once."""
        self._promote_wake = trio.Event()
        self._promote_at = -math.inf

    async def sleep_until_due(self, seconds: float) -> None:
        """Sleep *seconds*, or until this process schedules a retry due sooner (or did since :meth:`expect_retries`)."""
        self._promote_at = clock.wall() + seconds
        with trio.move_on_after(seconds):
            await self._promote_wake.wait()
        self._promote_at = math.inf

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


#: The promoter never wakes more often than this (seconds): due times are in milliseconds, clocks coarse.
PROMOTE_RESOLUTION = 0.01
#: After a failed promotion (Redis down) the promoter tries again this soon (seconds; at most reclaim_interval).
PROMOTE_RETRY = 1.0


class ReclaimTimer:
    """Every ``reclaim_interval``: reclaim expired leases, promote due retries, refresh gauges; and due retries
    promoted as they fall due (see the module docstring)."""

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
        """Run ticks forever, and the promoter beside them; a failing tick (Redis down) is logged and retried
        next interval. Cancellation is honoured at every wait."""
        await self.queue.try_ensure_group()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._promote_when_due)
            await self._tick_forever()

    async def _promote_when_due(self) -> None:
        while True:
            wait = self.cfg.reclaim_interval
            self.queue.expect_retries()
            try:
                await self.queue.promote_due()
                due = await self.queue.next_due()
            except (redis.RedisError, OSError) as exc:   # Redis down: the tick logs it; try again soon
                log.event(_log, "promote.failed", level=logging.DEBUG, error=str(exc))
                wait = min(wait, PROMOTE_RETRY)
            else:
                if due is not None:
                    wait = min(wait, max(due - clock.wall(), PROMOTE_RESOLUTION))
            await self.queue.sleep_until_due(wait)

    async def _tick_forever(self) -> None:
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
