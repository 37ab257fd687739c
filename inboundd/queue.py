"""The durable pointer queue on Redis Streams, and its reclaim timer.

Keys (all share the hash tag ``{prefix}``, so every multi-key script runs on
Redis Cluster): ``{prefix}:stream`` holds ready and in-flight jobs and is owned
by the consumer group ``inboundd``; ``{prefix}:delayed`` is a sorted set of jobs
waiting for their retry (score = due time in wall-clock ms, member = encoded
job); ``{prefix}:dlq`` is the dead-letter stream.

* **Enqueue** returns only once Redis acknowledged the ``XADD``. Concurrent
  enqueues are coalesced by :meth:`Queue.run` into pipelined batches; every
  caller still gets its own result or exception.
* **Claim** is ``XREADGROUP`` (the PEL entry is the lease); **ack**, **retry**,
  **dead-letter** and **requeue** are fenced Lua scripts
  (:mod:`inboundd.queue_scripts`): a consumer that lost its lease gets a
  logged no-op.
* **Attempts** live in the job (``job.attempt``): a job error, and a worker
  lost while holding the job, each count one. The reclaim timer puts a lost
  job back at the tail with its attempt counted, or dead-letters it with
  ``worker_lost`` once it reached ``max_attempts``, so a poison pill that
  kills its worker ends in the DLQ instead of looping.

The operations API (:meth:`Queue.stats`, :meth:`Queue.dead_letters`,
:meth:`Queue.redrive`) needs only a :class:`~inboundd.redisio.RedisIO`, so
``inboundctl`` can use it while the daemon is stopped.
"""

from __future__ import annotations

import logging
import math
from collections import Counter as _Tally
from typing import Any, Iterable, Sequence

import msgspec
import redis
import trio

from . import clock, jobs as jobs_mod, log, metrics
from .config import QueueConfig
from .jobs import Job, JobDecodeError
from .queue_scripts import Scripts
from .redisio import RedisIO

__all__ = [
    "GROUP",
    "Claimed",
    "DeadLetter",
    "Keys",
    "Queue",
    "QueueStats",
    "ReclaimTimer",
]

_log = log.get_logger("queue")

#: The consumer group that owns the stream.
GROUP = "inboundd"
#: Jobs per pipelined XADD batch of the enqueue batcher.
ENQUEUE_BATCH = 512
#: Entries handled per XAUTOCLAIM / promote / DLQ page.
PAGE = 200
#: Longest last-error text kept in a dead-letter entry.
MAX_ERROR_CHARS = 2000
#: The reclaim timer forgets group members idle this long with nothing pending.
FORGET_CONSUMER_AFTER = 86400.0
#: ``QueueStats.consumers`` counts group members that read within this many seconds.
ACTIVE_CONSUMER_IDLE = 10.0


class Keys(msgspec.Struct, frozen=True):
    """The queue's Redis keys for one prefix."""

    stream: str
    delayed: str
    dlq: str

    @classmethod
    def for_prefix(cls, prefix: str) -> "Keys":
        tag = "{" + prefix + "}"
        return cls(stream=f"{tag}:stream", delayed=f"{tag}:delayed", dlq=f"{tag}:dlq")

    def all(self) -> list[str]:
        return [self.stream, self.delayed, self.dlq]


class Claimed(msgspec.Struct):
    """One stream entry a consumer holds: the decoded job, or why it could not be decoded."""

    entry_id: str
    raw: bytes
    job: Job | None
    error: str | None = None


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


class QueueStopped(RuntimeError):
    """The enqueue batcher stopped before this enqueue was written."""


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode_entry(entry_id: Any, fields: Any) -> Claimed:
    raw = (fields or {}).get(b"job")
    eid = _s(entry_id)
    if raw is None:
        return Claimed(eid, b"", None, "stream entry has no 'job' field")
    try:
        return Claimed(eid, raw, jobs_mod.decode(raw))
    except JobDecodeError as exc:
        return Claimed(eid, raw, None, str(exc))


def _id_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


class _Request:
    __slots__ = ("payloads", "done", "result", "error")

    def __init__(self, payloads: list[bytes]) -> None:
        self.payloads = payloads
        self.done = trio.Event()
        self.result: list[str] = []
        self.error: BaseException | None = None


def _xadd_many(client: redis.Redis, stream: str, payloads: Sequence[bytes]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for payload in payloads:
        pipe.xadd(stream, {b"job": payload})
    return pipe.execute(raise_on_error=False)


class Queue:
    """The pointer queue. Construct once per daemon; see the module docstring."""

    def __init__(self, rio: RedisIO, cfg: QueueConfig, *, prefix: str = "inboundd") -> None:
        self.rio = rio
        self.cfg = cfg
        self.keys = Keys.for_prefix(prefix)
        self.scripts = Scripts(rio.client)
        self._requests: list[_Request] = []
        self._wake = trio.Event()
        self._batcher_running = False
        self._group_ready = False
        #: Pipelined XADD round trips made by the batcher (for tests and the bench).
        self.enqueue_round_trips = 0

    # ------------------------------------------------------------------ group

    def _ensure_group_sync(self, client: redis.Redis) -> None:
        try:
            client.xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def ensure_group(self) -> None:
        """Create the stream and its consumer group unless they exist (idempotent)."""
        await self.rio.run(self._ensure_group_sync)
        self._group_ready = True

    async def try_ensure_group(self) -> bool:
        """:meth:`ensure_group`, but a Redis that is down is logged, not raised.

        Starting without Redis is allowed: enqueues then fail (and the caller
        answers 503), and claims recreate the group once Redis is back.
        """
        try:
            await self.ensure_group()
            return True
        except (redis.RedisError, OSError) as exc:
            log.event(_log, "queue.redis_unavailable", level=logging.WARNING, error=str(exc))
            return False

    # ------------------------------------------------------------------ enqueue

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The enqueue batcher: coalesces concurrent enqueues into pipelined XADD batches.

        Reports started once the consumer group exists. On cancellation, any
        enqueue not yet written fails with :class:`QueueStopped`; a batch
        already sent is finished first (the thread is never abandoned).
        """
        await self.try_ensure_group()
        self._batcher_running = True
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                while self._requests:
                    batch: list[_Request] = []
                    size = 0
                    while self._requests and (not batch or size + len(self._requests[0].payloads) <= ENQUEUE_BATCH):
                        request = self._requests.pop(0)
                        batch.append(request)
                        size += len(request.payloads)
                    await self._write(batch)
        finally:
            self._batcher_running = False
            pending, self._requests = self._requests, []
            for request in pending:
                request.error = QueueStopped("the enqueue batcher stopped")
                request.done.set()

    async def _write(self, batch: list[_Request]) -> None:
        payloads = [p for request in batch for p in request.payloads]
        try:
            self.enqueue_round_trips += 1
            results = await self.rio.run(_xadd_many, self.keys.stream, payloads)
        except BaseException as exc:
            # Cancelled before the write (waiting for a thread): its callers learn that
            # nothing was accepted instead of waiting forever.
            error = QueueStopped("the enqueue batcher stopped") if isinstance(exc, trio.Cancelled) else exc
            for request in batch:
                request.error = error
                request.done.set()
            if not isinstance(exc, Exception):
                raise
            return
        pos = 0
        for request in batch:
            mine = results[pos:pos + len(request.payloads)]
            pos += len(request.payloads)
            failed = next((r for r in mine if isinstance(r, Exception)), None)
            if failed is not None:
                request.error = failed
            else:
                request.result = [_s(r) for r in mine]
            request.done.set()

    async def enqueue(self, job: Job) -> str:
        """Durably enqueue *job*; returns its stream entry id once Redis acknowledged it.

        Raises (``redis.RedisError``, :class:`QueueStopped`) when the write was
        not acknowledged: the caller must not report the job accepted.
        """
        return (await self.enqueue_many([job]))[0]

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
        """Durably enqueue *jobs* in order; all-or-raise from the caller's point of view.

        When it raises, some of the jobs may still have been written (a
        re-enqueue then makes a duplicate job, which the ledger absorbs).
        """
        payloads = [jobs_mod.encode(self._check(job)) for job in jobs]
        if not payloads:
            return []
        try:
            if self._batcher_running:
                request = _Request(payloads)
                self._requests.append(request)
                self._wake.set()
                await request.done.wait()
                if request.error is not None:
                    raise request.error
                ids = request.result
            else:
                results = await self.rio.run(_xadd_many, self.keys.stream, payloads)
                failed = next((r for r in results if isinstance(r, Exception)), None)
                if failed is not None:
                    raise failed
                ids = [_s(r) for r in results]
        except Exception as exc:
            metrics.enqueue_failures.inc(len(payloads))
            log.event(_log, "job.enqueue_failed", level=logging.WARNING, jobs=len(payloads), error=str(exc),
                      **({"job_id": jobs[0].id, "account": jobs[0].account} if len(jobs) == 1 else {}))
            raise
        for (provider, account), n in _Tally((job.provider, job.account) for job in jobs).items():
            metrics.jobs_enqueued.labels(provider, account).inc(n)
        if _log.isEnabledFor(logging.DEBUG):
            for job, entry_id in zip(jobs, ids):
                log.event(_log, "job.enqueue", level=logging.DEBUG, entry_id=entry_id, **job.log_fields())
        return ids

    @staticmethod
    def _check(job: Job) -> Job:
        if not isinstance(job, Job):
            raise TypeError(f"expected a Job, got {type(job).__name__}")
        return job

    # ------------------------------------------------------------------ claim

    def _claim_sync(self, client: redis.Redis, consumer: str, count: int, block_ms: int | None,
                    start: str) -> list[Claimed]:
        try:
            reply = client.xreadgroup(GROUP, consumer, {self.keys.stream: start}, count=count, block=block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The stream or group vanished (FLUSHALL, a new Redis): recreate and read again.
            self._ensure_group_sync(client)
            reply = client.xreadgroup(GROUP, consumer, {self.keys.stream: start}, count=count, block=block_ms)
        out: list[Claimed] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                out.append(_decode_entry(entry_id, fields))
        return out

    async def claim(self, consumer: str, count: int, *, block: float | None = None) -> list[Claimed]:
        """Claim up to *count* new entries for *consumer*, waiting at most *block* seconds (≤ 1 s).

        Cancellation waits for the ``XREADGROUP`` to return (within *block*) and
        then delivers the entries anyway; the caller owns whatever it returns.
        """
        block = self.cfg.block if block is None else block
        block_ms = max(1, int(block * 1000)) if block > 0 else None
        return await self.rio.run(self._claim_sync, consumer, count, block_ms, ">")

    async def own_pending(self, consumer: str, count: int = PAGE) -> list[Claimed]:
        """Entries already pending for *consumer* (``XREADGROUP … 0``), oldest first, up to *count*."""
        return await self.rio.run(self._claim_sync, consumer, count, None, "0")

    # ------------------------------------------------------------------ fenced lease operations

    def _stale(self, operation: str, consumer: str, entry_id: str, job: Job | None) -> None:
        metrics.stale_owner.labels(operation).inc()
        fields = job.log_fields() if job is not None else {}
        log.event(_log, "job.stale_owner", level=logging.WARNING, operation=operation, consumer=consumer,
                  entry_id=entry_id, **fields)

    async def ack(self, consumer: str, entries: Sequence[Claimed]) -> list[bool]:
        """Ack and delete *entries* if still pending for *consumer*; one bool per entry."""
        if not entries:
            return []
        ids = [c.entry_id for c in entries]
        flags = await self.rio.run(
            lambda client: self.scripts.ack(keys=[self.keys.stream], args=[GROUP, consumer, *ids], client=client))
        result = []
        for claimed, flag in zip(entries, flags):
            ok = bool(flag)
            result.append(ok)
            if not ok:
                self._stale("ack", consumer, claimed.entry_id, claimed.job)
        return result

    async def retry(self, consumer: str, claimed: Claimed, job: Job, delay: float, *, kind: str) -> bool:
        """Atomically schedule *job* (the updated job) after *delay* seconds and ack the entry.

        Returns False (a logged no-op) if the entry is no longer pending for *consumer*.
        """
        due_ms = clock.wall_ms() + max(0, int(math.ceil(delay * 1000)))
        ok = bool(await self.rio.run(lambda client: self.scripts.retry(
            keys=[self.keys.stream, self.keys.delayed],
            args=[GROUP, consumer, claimed.entry_id, due_ms, jobs_mod.encode(job)], client=client)))
        if not ok:
            self._stale("retry", consumer, claimed.entry_id, job)
            return False
        metrics.jobs_retried.labels(job.provider, job.account, kind).inc()
        log.event(_log, "job.retry", kind=kind, delay=round(delay, 3), transient=job.transient,
                  consumer=consumer, **job.log_fields())
        return True

    async def dead_letter(self, consumer: str, claimed: Claimed, *, reason: str, error: str,
                          attempts: int) -> bool:
        """Atomically move the entry to the DLQ with *reason*, the last *error* and *attempts*.

        The raw payload is kept as it was (even when it could not be decoded).
        Returns False (a logged no-op) if the entry is no longer pending for *consumer*.
        """
        job = claimed.job
        fields: list[Any] = [
            "job", claimed.raw, "reason", reason, "error", error[:MAX_ERROR_CHARS], "attempts", attempts,
            "at", f"{clock.wall():.3f}", "job_id", job.id if job else "", "account", job.account if job else "",
            "provider", job.provider if job else "", "entry_id", claimed.entry_id, "consumer", consumer,
        ]
        reply = await self.rio.run(lambda client: self.scripts.dead_letter(
            keys=[self.keys.stream, self.keys.dlq],
            args=[GROUP, consumer, claimed.entry_id, self.cfg.dlq_maxlen, *fields], client=client))
        if reply is None:
            self._stale("dead_letter", consumer, claimed.entry_id, job)
            return False
        job_fields = job.log_fields() if job else {"job_id": "", "account": "", "provider": "", "attempt": attempts}
        metrics.jobs_dead_lettered.labels(job_fields["provider"], job_fields["account"], reason).inc()
        log.event(_log, "job.dead_letter", level=logging.WARNING, reason=reason, error=error[:200],
                  attempts=attempts, dlq_id=_s(reply[0]), consumer=consumer, **job_fields)
        for evicted in reply[1:]:
            metrics.dlq_evicted.inc()
            log.event(_log, "dlq.evicted", level=logging.WARNING, dlq_id=_s(evicted[0]), job_id=_s(evicted[1]),
                      account=_s(evicted[2]), reason=_s(evicted[3]), dlq_maxlen=self.cfg.dlq_maxlen)
        return True

    async def heartbeat(self, consumer: str, entry_ids: Sequence[str]) -> list[str]:
        """Extend the lease of *entry_ids* still pending for *consumer*; returns the ids it lost."""
        if not entry_ids:
            return []
        ids = list(entry_ids)
        flags = await self.rio.run(lambda client: self.scripts.heartbeat(
            keys=[self.keys.stream], args=[GROUP, consumer, *ids], client=client))
        return [i for i, flag in zip(ids, flags) if not flag]

    async def recover(self, consumer: str, entries: Iterable[Claimed], *, why: str) -> int:
        """Deal with entries whose worker was lost (reclaimed, or left pending by a dead process).

        Each counts one attempt: requeued at the tail with ``attempt + 1``, or
        dead-lettered with ``worker_lost`` once that reaches ``max_attempts``.
        Undecodable entries are dead-lettered as ``invalid_payload``. Entries
        must be pending for *consumer*. Returns how many were requeued.
        """
        requeued = 0
        for claimed in entries:
            if not claimed.raw and claimed.job is None:
                # The entry itself was deleted (nothing to process): drop the lease.
                await self.ack(consumer, [claimed])
                continue
            if claimed.job is None:
                await self.dead_letter(consumer, claimed, reason="invalid_payload", error=claimed.error or "",
                                       attempts=0)
                continue
            job = msgspec.structs.replace(claimed.job, attempt=claimed.job.attempt + 1)
            if job.attempt >= self.cfg.max_attempts:
                await self.dead_letter(consumer, claimed, reason="worker_lost",
                                       error=f"worker lost while holding the job ({why})", attempts=job.attempt)
                continue
            new_id = await self._requeue(consumer, claimed, job)
            if new_id is None:
                continue
            requeued += 1
            metrics.jobs_reclaimed.inc()
            log.event(_log, "job.reclaim", level=logging.WARNING, why=why, entry_id=claimed.entry_id,
                      new_entry_id=new_id, consumer=consumer, **job.log_fields())
        return requeued

    async def hand_back(self, consumer: str, entries: Iterable[Claimed]) -> int:
        """Return claimed entries this consumer will not start (drain, stop) to the stream at once.

        Unlike :meth:`recover` no attempt is counted: the job never ran. Other
        consumers (or this daemon after a restart) take them without waiting
        for the lease. Undecodable entries stay pending for the reclaimer to
        dead-letter. Returns how many went back.
        """
        returned = 0
        for claimed in entries:
            if claimed.job is None:
                continue
            new_id = await self._requeue(consumer, claimed, claimed.job)
            if new_id is not None:
                returned += 1
                log.event(_log, "job.hand_back", entry_id=claimed.entry_id, new_entry_id=new_id,
                          consumer=consumer, **claimed.job.log_fields())
        return returned

    async def _requeue(self, consumer: str, claimed: Claimed, job: Job) -> str | None:
        """Atomically re-add *job* at the tail and drop *claimed* (fenced); None if the lease moved."""
        new_id = await self.rio.run(lambda client: self.scripts.requeue(
            keys=[self.keys.stream], args=[GROUP, consumer, claimed.entry_id, jobs_mod.encode(job)],
            client=client))
        if new_id is None:
            self._stale("requeue", consumer, claimed.entry_id, job)
            return None
        return _s(new_id)

    # ------------------------------------------------------------------ timer work

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
            next_start, entries = _s(reply[0]), reply[1]
            return next_start, [_decode_entry(eid, fields) for eid, fields in entries if eid is not None]

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

    # ------------------------------------------------------------------ operations API

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
        group = next((g for g in groups if _s(g["name"]) == GROUP), None)
        in_flight = int(pending["pending"])
        ready = max(0, int(length) - in_flight)
        oldest = None
        if ready and group is not None:
            first = client.xrange(self.keys.stream, f"({_s(group['last-delivered-id'])}", "+", count=1)
            if first:
                oldest = max(0.0, clock.wall() - _id_ms(_s(first[0][0])) / 1000)
        elif ready:  # no group yet: everything in the stream is ready
            first = client.xrange(self.keys.stream, "-", "+", count=1)
            if first:
                oldest = max(0.0, clock.wall() - _id_ms(_s(first[0][0])) / 1000)
        lag = group.get("lag") if group is not None else None
        return QueueStats(
            ready=ready,
            in_flight=in_flight,
            in_flight_by_consumer={_s(c["name"]): int(c["pending"]) for c in pending["consumers"]},
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
            entry_id=_s(entry_id),
            job_id=_s(fields.get(b"job_id", b"")),
            account=_s(fields.get(b"account", b"")),
            provider=_s(fields.get(b"provider", b"")),
            reason=_s(fields.get(b"reason", b"")),
            last_error=_s(fields.get(b"error", b"")),
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
            start = f"({_s(page[-1][0])}"
        return out

    async def dead_letters(self, account: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Dead-lettered jobs, oldest first, optionally of one *account*, at most *limit*."""
        return await self._scan_dlq(lambda d: account is None or d.account == account, limit)

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
                log.event(_log, "reclaim.failed", level=logging.WARNING, error=str(exc))
            await trio.sleep(self.cfg.reclaim_interval)
