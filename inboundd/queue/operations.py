"""The operator API: exact stats, queue gauges, the dead-letter list and redrive.

It needs only a :class:`~inboundd.redisio.RedisIO`, so ``inboundctl`` can use
it while the daemon is stopped.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import msgspec
import redis

from .. import clock, jobs as jobs_mod, log, metrics
from ..jobs import Job, JobDecodeError
from .base import GROUP, PAGE, QueueBase, text

__all__ = ["ACTIVE_CONSUMER_IDLE", "DeadLetter", "JobPlace", "Operations", "QueueStats"]

_log = log.get_logger("queue")

#: ``QueueStats.consumers`` counts group members that read within this many seconds.
ACTIVE_CONSUMER_IDLE = 10.0


class QueueStats(msgspec.Struct, kw_only=True):
    """A snapshot of the queue (all counts exact at the moment of the read)."""

    ready: int
    in_flight: int
    in_flight_by_consumer: dict[str, int]
    delayed: int
    dead: int
    #: Seconds the oldest not-yet-claimed job has waited in the stream; None when none waits.
    oldest_ready_age: float | None
    #: Consumer-group lag as Redis reports it (None where Redis cannot tell, e.g. 6.2).
    lag: int | None
    #: Group members that read within the last few seconds.
    consumers: int


class DeadLetter(msgspec.Struct, kw_only=True):
    """One dead-lettered job as kept in ``{prefix}:dlq``."""

    entry_id: str
    job_id: str
    account: str
    provider: str
    reason: str
    last_error: str
    attempts: int
    #: Wall-clock seconds when it was dead-lettered.
    dead_at: float
    #: The decoded job, or None when the payload itself was invalid.
    job: Job | None
    raw: bytes


class JobPlace(msgspec.Struct, kw_only=True):
    """Where one job is in the queue right now (what ``inboundctl trace`` shows)."""

    #: ``ready`` (waiting to be claimed), ``in_flight`` (claimed; the PEL entry is the lease),
    #: ``delayed`` (waiting for its retry), ``dead`` (dead-lettered).
    state: Literal["ready", "in_flight", "delayed", "dead"]
    job: Job | None
    #: The job id (also for a dead letter whose payload could not be decoded).
    job_id: str
    #: The message identity the job points at (None when the payload could not be decoded).
    identity: str | None = None
    #: Its stream entry (ready, in flight) or dead-letter entry; None while delayed.
    entry_id: str | None = None
    #: Wall-clock seconds when it entered this state as far as Redis tells: the entry's
    #: time (ready, in flight), when it was dead-lettered; None while delayed.
    since: float | None = None
    #: In flight: the consumer holding it, seconds since it claimed or renewed the lease,
    #: seconds until the lease expires (negative: expired, the reclaim timer takes it next),
    #: and how many times the stream delivered this entry.
    holder: str | None = None
    idle: float | None = None
    lease_remaining: float | None = None
    deliveries: int | None = None
    #: Delayed: wall-clock seconds when it is due again.
    due_at: float | None = None
    #: Dead: why, the last error, and the attempts counted.
    reason: str | None = None
    last_error: str | None = None
    attempts: int | None = None


def _id_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


class Operations(QueueBase):
    """What an operator asks of the queue: :meth:`stats`, :meth:`dead_letters`, :meth:`redrive`."""

    def _stats_sync(self, client: redis.Redis) -> QueueStats:
        pipe = client.pipeline(transaction=False)
        pipe.xlen(self.keys.stream)
        pipe.zcard(self.keys.delayed)
        pipe.xlen(self.keys.dlq)
        pipe.xpending(self.keys.stream, GROUP)
        pipe.xinfo_groups(self.keys.stream)
        pipe.xinfo_consumers(self.keys.stream, GROUP)
        length, delayed, dead, pending, groups, members = pipe.execute(raise_on_error=False)
        if isinstance(pending, Exception):
            pending = {"pending": 0, "consumers": []}
        if isinstance(groups, Exception):
            groups = []
        if isinstance(members, Exception):
            members = []
        group = next((g for g in groups if text(g["name"]) == GROUP), None)
        in_flight = int(pending["pending"])
        ready = max(0, int(length) - in_flight)
        oldest = None
        if ready and group is not None:
            first = client.xrange(self.keys.stream, f"({text(group['last-delivered-id'])}", "+", count=1)
            if first:
                oldest = max(0.0, clock.wall() - _id_ms(text(first[0][0])) / 1000)
        elif ready:  # no group yet: everything in the stream is ready
            first = client.xrange(self.keys.stream, "-", "+", count=1)
            if first:
                oldest = max(0.0, clock.wall() - _id_ms(text(first[0][0])) / 1000)
        lag = group.get("lag") if group is not None else None
        return QueueStats(
            ready=ready,
            in_flight=in_flight,
            in_flight_by_consumer={text(c["name"]): int(c["pending"]) for c in pending["consumers"]},
            delayed=int(delayed),
            dead=int(dead),
            oldest_ready_age=oldest,
            lag=int(lag) if lag is not None else None,
            consumers=sum(1 for m in members if m["idle"] < ACTIVE_CONSUMER_IDLE * 1000),
        )

    async def stats(self) -> QueueStats:
        """An exact snapshot of ready, in-flight (per consumer), delayed and dead jobs."""
        return await self.rio.run(self._stats_sync)

    async def refresh_gauges(self) -> QueueStats:
        """Read :meth:`stats` and set the ``queue_*`` gauges."""
        stats = await self.stats()
        metrics.queue_ready.set(stats.ready)
        metrics.queue_in_flight.set(stats.in_flight)
        metrics.queue_delayed.set(stats.delayed)
        metrics.queue_dead.set(stats.dead)
        return stats

    def _dlq_page(self, client: redis.Redis, start: str) -> list[tuple[Any, Any]]:
        return client.xrange(self.keys.dlq, start, "+", count=PAGE)

    @staticmethod
    def _dead_letter(entry_id: Any, fields: dict[bytes, bytes]) -> DeadLetter:
        raw = fields.get(b"job", b"")
        try:
            job: Job | None = jobs_mod.decode(raw)
        except JobDecodeError:
            job = None
        return DeadLetter(
            entry_id=text(entry_id),
            job_id=text(fields.get(b"job_id", b"")),
            account=text(fields.get(b"account", b"")),
            provider=text(fields.get(b"provider", b"")),
            reason=text(fields.get(b"reason", b"")),
            last_error=text(fields.get(b"error", b"")),
            attempts=int(fields.get(b"attempts", b"0") or 0),
            dead_at=float(fields.get(b"at", b"0") or 0),
            job=job,
            raw=raw,
        )

    async def _scan_dlq(self, want: Any, limit: int | None) -> list[DeadLetter]:
        out: list[DeadLetter] = []
        start = "-"
        while limit is None or len(out) < limit:
            page = await self.rio.run(self._dlq_page, start)
            for entry_id, fields in page:
                letter = self._dead_letter(entry_id, fields)
                if want(letter):
                    out.append(letter)
                    if limit is not None and len(out) >= limit:
                        break
            if len(page) < PAGE:
                break
            start = f"({text(page[-1][0])}"
        return out

    async def dead_letters(self, account: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Dead-lettered jobs, oldest first, optionally of one *account*, at most *limit*."""
        return await self._scan_dlq(lambda d: account is None or d.account == account, limit)

    def _find_in_stream(self, client: redis.Redis, want: Callable[[Job], bool]) -> list[JobPlace]:
        found: list[JobPlace] = []
        start = "-"
        while True:
            page = client.xrange(self.keys.stream, start, "+", count=PAGE)
            for entry_id, fields in page:
                raw = (fields or {}).get(b"job")
                try:
                    job = jobs_mod.decode(raw) if raw is not None else None
                except JobDecodeError:
                    job = None
                if job is not None and want(job):
                    eid = text(entry_id)
                    found.append(JobPlace(state="ready", job=job, job_id=job.id, identity=job.identity(),
                                          entry_id=eid, since=_id_ms(eid) / 1000))
            if len(page) < PAGE:
                break
            start = f"({text(page[-1][0])}"
        for place in found:
            try:
                pending = client.xpending_range(self.keys.stream, GROUP, place.entry_id, place.entry_id, 1)
            except redis.ResponseError:  # no group yet: nothing was ever claimed
                pending = []
            if pending:
                idle = int(pending[0]["time_since_delivered"]) / 1000
                place.state = "in_flight"
                place.holder = text(pending[0]["consumer"])
                place.idle = idle
                place.lease_remaining = round(self.cfg.lease - idle, 3)
                place.deliveries = int(pending[0]["times_delivered"])
        return found

    def _find_delayed(self, client: redis.Redis, want: Callable[[Job], bool]) -> list[JobPlace]:
        found: list[JobPlace] = []
        offset = 0
        while True:
            page = client.zrange(self.keys.delayed, offset, offset + PAGE - 1, withscores=True)
            for member, score in page:
                try:
                    job = jobs_mod.decode(member)
                except JobDecodeError:
                    continue
                if want(job):
                    found.append(JobPlace(state="delayed", job=job, job_id=job.id, identity=job.identity(),
                                          due_at=float(score) / 1000))
            if len(page) < PAGE:
                return found
            offset += PAGE

    async def find_jobs(self, want: Callable[[Job], bool], *, job_id: str | None = None) -> list[JobPlace]:
        """Every job in the queue that *want* accepts, with where it is: ready, in flight, delayed, dead.

        Reads the stream, the delayed set and the dead-letter stream page by
        page (the queue keeps no index by job or identity: the cost grows with
        the backlog, which is what an operator looking for a job can afford).
        *job_id* also finds a dead letter whose payload could not be decoded.
        Results are in that order of states; a job moving meanwhile may show
        in two states or none.
        """
        found = await self.rio.run(self._find_in_stream, want)
        found += await self.rio.run(self._find_delayed, want)

        def dead(letter: DeadLetter) -> bool:
            return want(letter.job) if letter.job is not None else letter.job_id == job_id

        for letter in await self._scan_dlq(dead, None):
            found.append(JobPlace(state="dead", job=letter.job, job_id=letter.job_id, entry_id=letter.entry_id,
                                  identity=letter.job.identity() if letter.job is not None else None,
                                  since=letter.dead_at, reason=letter.reason, last_error=letter.last_error,
                                  attempts=letter.attempts))
        return found

    async def redrive(self, *, job_ids: list[str] | None = None, account: str | None = None, all: bool = False,
                      dry_run: bool = False) -> int:
        """Move dead-lettered jobs back to the stream tail with attempts reset; returns how many.

        Select exactly one of *job_ids*, *account* or *all*. With *dry_run*
        nothing changes and the count is what would move. Entries whose payload
        cannot be decoded are left in the DLQ (redriving them would only
        dead-letter them again).
        """
        if sum(bool(x) for x in (job_ids, account, all)) != 1:
            raise ValueError("redrive: give exactly one of job_ids, account or all")
        ids = set(job_ids or ())

        def want(d: DeadLetter) -> bool:
            if d.job is None:
                return False
            return all or (d.job_id in ids) or (account is not None and d.account == account)

        letters = await self._scan_dlq(want, None)
        if dry_run:
            log.event(_log, "dlq.redrive_dry_run", jobs=len(letters))
            return len(letters)
        moved = 0
        for start in range(0, len(letters), PAGE):
            chunk = letters[start:start + PAGE]
            args: list[Any] = []
            for letter in chunk:
                assert letter.job is not None
                args += [letter.entry_id, jobs_mod.encode(
                    msgspec.structs.replace(letter.job, attempt=0, transient=0))]
            moved += int(await self.rio.run(lambda client: self.scripts.redrive(
                keys=[self.keys.dlq, self.keys.stream], args=args, client=client)))
        metrics.jobs_redriven.inc(moved)
        for letter in letters:
            assert letter.job is not None
            log.event(_log, "job.redrive", dlq_id=letter.entry_id, reason=letter.reason, **letter.job.log_fields())
        return moved
