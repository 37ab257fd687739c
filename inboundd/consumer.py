"""The consumer pool: claim a batch → handle each job → ack, retry or dead-letter.

Each of the pool's ``count`` consumer tasks has its own Redis consumer name
(``{instance}-c{n}``). On start a consumer first takes back the entries still
pending under its name (a previous process with the same instance id died
holding them: they count one attempt, see :meth:`Queue.recover`), then loops
on ``XREADGROUP … BLOCK ≤ 1 s``. After a Redis call failed, it also looks,
before claiming (every second for one ``lease``), for entries delivered to
it that it never received — a timed-out claim that Redis carried out all
the same — and requeues them, no attempt counted. While it holds entries,
a heartbeat extends their leases every ``lease / 3`` (``XCLAIM … JUSTID``),
so only a dead worker's jobs are reclaimed.

A handler that raises :class:`~inboundd.outcomes.DependencyDown`
(PostgreSQL does not answer) is not retried through the queue: the
consumer keeps the job (its lease renewed by the heartbeat), waits until the
dependency answers, and runs it again — at once after the outage, with no
attempt counted. A drain or stop meanwhile hands the job back instead.

A handler that offers ``handle_batch`` (the daemon's
:class:`~inboundd.processing.Processor` does) gets the jobs of a claimed
batch at once, and each job's result is then acted on as below.

What a handler's result becomes otherwise is decided by :func:`decide`, a pure
function (tested directly): an :class:`~inboundd.outcomes.Outcome` → ack;
:class:`~inboundd.outcomes.TransientError` → retry without burning an attempt
(up to ``transient_attempts``); :class:`~inboundd.outcomes.PermanentError` →
dead-letter now; any other exception → retry counting an attempt, dead-letter
after ``max_attempts``. Delays follow :func:`inboundd.backoff.delay`
(exponential, capped, full jitter).

Drain (:meth:`ConsumerPool.drain`) stops claiming; jobs already claimed are
finished; :meth:`ConsumerPool.wait_drained` returns once none is held.
"""

from __future__ import annotations

import logging
import random
from functools import partial
from typing import Awaitable, Callable, Literal, Protocol, Sequence

import msgspec
import redis
import trio

from . import backoff, clock, log, metrics
from .config_schema import QueueConfig
from .jobs import Job
from .outcomes import DependencyDown, Outcome, PermanentError, TransientError
from .queue import Claimed, Queue
from .redisio import failure_level

__all__ = ["ConsumerPool", "Decision", "Handler", "decide"]

_log = log.get_logger("consumer")

#: Buffered acks are flushed before the next job once the oldest waited this long.
ACK_FLUSH_AFTER = 0.05
#: Backoff after a failed Redis call in the claim loop (seconds, doubling up to the cap, no jitter).
REDIS_RETRY_BASE, REDIS_RETRY_CAP = 0.1, 5.0
#: After a failed Redis call, how often (seconds) a consumer looks for entries delivered to it that it never
#: received (see :meth:`ConsumerPool._take_back_stranded`), for one ``queue.lease``.
STRANDED_CHECK_EVERY = 1.0


def _redis_backoff() -> backoff.Backoff:
    return backoff.Backoff(REDIS_RETRY_BASE, REDIS_RETRY_CAP, jitter="none")


class Handler(Protocol):
    """Handles one job: returns its Outcome or raises.

    A handler may also offer ``async handle_batch(jobs)`` returning one
    result per job, in order: its Outcome, or the exception ``handle`` would
    raise for it. The pool then hands it the jobs of a claimed batch at once.
    """

    async def handle(self, job: Job) -> Outcome: ...


# --------------------------------------------------------------------------- pure decisions


class Decision(msgspec.Struct, frozen=True):
    """What to do with a handled job."""

    action: Literal["ack", "retry", "dead_letter"]
    #: The job to schedule (retry) with its counters updated, or the job as handled.
    job: Job
    delay: float = 0.0
    kind: str = ""  # retry kind: "error" | "transient"
    reason: str = ""  # dead-letter reason
    error: str = ""
    attempts: int = 0


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def decide(job: Job, result: Outcome | BaseException, cfg: QueueConfig, *,
           rand: Callable[[], float] = random.random) -> Decision:
    """Turn a handler's *result* (an Outcome or the exception it raised) into a queue action."""
    if isinstance(result, Outcome):
        return Decision("ack", job, attempts=job.attempt)
    error = _describe(result)
    if isinstance(result, PermanentError):
        return Decision("dead_letter", job, reason=result.reason, error=error, attempts=job.attempt + 1)
    if isinstance(result, TransientError):
        transient = job.transient + 1
        if transient >= cfg.transient_attempts:
            return Decision("dead_letter", job, reason="transient_exhausted", error=error,
                            attempts=job.attempt + 1)
        delay = backoff.delay(transient, cfg.backoff_base, cfg.backoff_cap, retry_after=result.retry_after,
                              rand=rand)
        return Decision("retry", msgspec.structs.replace(job, transient=transient), delay=delay, kind="transient",
                        error=error, attempts=job.attempt)
    attempt = job.attempt + 1
    if attempt >= cfg.max_attempts:
        return Decision("dead_letter", job, reason="max_attempts", error=error, attempts=attempt)
    delay = backoff.delay(attempt, cfg.backoff_base, cfg.backoff_cap, rand=rand)
    return Decision("retry", msgspec.structs.replace(job, attempt=attempt), delay=delay, kind="error",
                    error=error, attempts=attempt)


# --------------------------------------------------------------------------- the pool


class _Consumer:
    """State of one consumer task, read by the pool for drain and status."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.held: dict[str, Claimed] = {}
        #: Held entries whose lease the heartbeat found taken by another consumer.
        self.lost: set[str] = set()
        self.claiming = False
        self.stopping = False
        self.cancel_scope = trio.CancelScope()
        #: Until then (trio time), after a failed Redis call, look for stranded entries before claiming.
        self.check_stranded_until = 0.0
        self.next_stranded_check = 0.0


class ConsumerPool:
    """``count`` consumer tasks feeding *handler*; see the module docstring."""

    def __init__(self, queue: Queue, handler: Handler, cfg: QueueConfig, instance: str, *, count: int) -> None:
        self.queue = queue
        self.handler = handler
        self.cfg = cfg
        self.instance = instance
        self._target = count
        self._consumers: dict[int, _Consumer] = {}
        self._nursery: trio.Nursery | None = None
        self._draining = False
        self._resumed = trio.Event()
        self._changed = trio.Event()

    # ------------------------------------------------------------------ public surface

    @property
    def count(self) -> int:
        """The configured number of consumers (after :meth:`resize`)."""
        return self._target

    @property
    def busy(self) -> int:
        """Jobs currently held (claimed and not yet acked, retried or dead-lettered)."""
        return sum(len(c.held) for c in self._consumers.values())

    def consumer_names(self) -> list[str]:
        return [c.name for _, c in sorted(self._consumers.items())]

    def drain(self) -> None:
        """Stop claiming new jobs; jobs already claimed are finished."""
        if not self._draining:
            self._draining = True
            self._resumed = trio.Event()
            log.event(_log, "consumers.drain", busy=self.busy)
            self._notify()

    def resume(self) -> None:
        """Claim again after :meth:`drain`."""
        if self._draining:
            self._draining = False
            self._resumed.set()
            log.event(_log, "consumers.resume")
            self._notify()

    def is_drained(self) -> bool:
        return self._draining and not any(c.held or c.claiming for c in self._consumers.values())

    async def wait_drained(self) -> None:
        """Return once the pool is draining and holds no job (no claim in flight either)."""
        while not self.is_drained():
            await self._changed.wait()

    def resize(self, n: int) -> None:
        """Run *n* consumers: start new ones, or let the highest-numbered finish their batch and stop."""
        self._target = max(0, n)
        if self._nursery is None:
            return
        alive = sorted(i for i, c in self._consumers.items() if not c.stopping)
        for index in alive[self._target:]:
            self._consumers[index].stopping = True
        self._notify()
        for _ in range(self._target - min(len(alive), self._target)):
            self._nursery.start_soon(self._run_consumer, self._free_index())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the consumers; reports started once each has taken back its own pending entries.

        With Redis down, each consumer reports started at once and keeps
        retrying (take-back first, then claims) with backoff.
        """
        await self.queue.try_ensure_group()
        async with trio.open_nursery() as nursery:
            for _ in range(self._target):
                await nursery.start(self._run_consumer, self._free_index())
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    # ------------------------------------------------------------------ internals

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _free_index(self) -> int:
        index = 0
        while index in self._consumers:
            index += 1
        self._consumers[index] = _Consumer(f"{self.instance}-c{index}")
        return index

    async def _run_consumer(self, index: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        me = self._consumers[index]
        try:
            await self._take_back(me, task_status)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeat, me)
                await self._loop(me)
                nursery.cancel_scope.cancel()
        finally:
            del self._consumers[index]
            self._notify()
            log.event(_log, "consumer.stopped", consumer=me.name)

    async def _take_back(self, me: _Consumer, task_status: trio.TaskStatus[None]) -> None:
        """Recover entries pending under this consumer's name, then report started.

        If Redis is unreachable, report started anyway and keep trying: the
        daemon must come up (and say it is degraded) without Redis.
        """
        retry, started = _redis_backoff(), False
        while True:
            try:
                while True:
                    own = await self.queue.own_pending(me.name)
                    if not own:
                        if not started:
                            task_status.started()
                        return
                    log.event(_log, "consumer.take_back", level=logging.WARNING, consumer=me.name, jobs=len(own))
                    await self.queue.recover(me.name, own, why="consumer restarted")
            except (redis.RedisError, OSError) as exc:
                delay = retry.failed()
                log.event(_log, "consumer.redis_error", level=failure_level(exc), consumer=me.name, error=str(exc),
                          retry_in=delay)
                if not started:
                    task_status.started()
                    started = True
                await trio.sleep(delay)

    async def _loop(self, me: _Consumer) -> None:
        retry = _redis_backoff()
        acks: list[Claimed] = []  # handled, to be acked with the next claim (one Redis call)
        while not me.stopping:
            if self._draining:
                await self._flush_acks(me, acks)
                acks = []
                await self._changed.wait()  # resume() or resize() wakes us
                continue
            me.claiming = True
            try:
                batch = await self._claim(me, acks)
                retry.reset()
            except (redis.RedisError, OSError) as exc:
                delay = retry.failed()
                log.event(_log, "consumer.redis_error", level=failure_level(exc), consumer=me.name, error=str(exc),
                          retry_in=delay)
                me.check_stranded_until = trio.current_time() + self.cfg.lease
                me.claiming = False
                self._notify()
                await trio.sleep(delay)
                continue
            finally:
                acks = []
            for claimed in batch:
                me.held[claimed.entry_id] = claimed
            me.claiming = False
            self._notify()
            if batch:
                acks = await self._process_batch(me, batch)
        await self._flush_acks(me, acks)

    async def _claim(self, me: _Consumer, acks: list[Claimed]) -> list[Claimed]:
        """Ack *acks* and claim the next batch in one Redis call; wait for work (≤ ``block``) only when none is ready.

        The acks are settled (metrics, log, released from ``held``) here, also
        when the call fails: their entries then stay pending for the reclaim
        timer, as with :meth:`_flush_acks`.
        """
        try:
            now = trio.current_time()
            if now < me.check_stranded_until and now >= me.next_stranded_check:
                me.next_stranded_check = now + STRANDED_CHECK_EVERY
                await self._take_back_stranded(me)
            flags, batch = await self.queue.ack_and_claim(me.name, acks, self.cfg.claim_batch)
        except (redis.RedisError, OSError) as exc:
            if acks:
                log.event(_log, "consumer.ack_failed", level=logging.WARNING, consumer=me.name, jobs=len(acks),
                          error=str(exc))
                self._acked(me, acks, [False] * len(acks))
            raise
        if acks:
            self._acked(me, acks, flags)
        if batch:
            return batch
        return await self.queue.claim(me.name, self.cfg.claim_batch)

    async def _take_back_stranded(self, me: _Consumer) -> None:
        """Requeue entries pending under this consumer's name that it does not hold (no attempt counted).

        A claim whose Redis call failed (a timeout: Redis or the path to it
        stopped answering) may still be carried out by Redis later, when the
        command held up on the way arrives: the entries it delivers sit in
        this consumer's pending list, but no task received them. Without
        this, they would wait a whole ``queue.lease`` for the reclaim timer.
        Called before claiming, so every entry this consumer did receive is
        in ``held``.
        """
        own = await self.queue.own_pending(me.name)
        stranded = [claimed for claimed in own if claimed.entry_id not in me.held]
        if stranded:
            log.event(_log, "consumer.take_back", level=logging.WARNING, consumer=me.name, jobs=len(stranded),
                      why="delivered while a claim failed")
            await self.queue.recover(me.name, stranded, why="delivered while a claim failed", count_attempt=False)

    async def _process_batch(self, me: _Consumer, batch: list[Claimed]) -> list[Claimed]:
        """Handle *batch* in order; returns the handled entries still to be acked (the oldest < ``ACK_FLUSH_AFTER``).

        A handler with ``handle_batch`` gets the batch's jobs at once (when
        there are two or more and no drain or stop has begun); otherwise the
        jobs are handled one by one.
        """
        debug = _log.isEnabledFor(logging.DEBUG)
        together = getattr(self.handler, "handle_batch", None)
        if together is not None and not (self._draining or me.stopping):
            live = [c for c in batch if not (me.lost and c.entry_id in me.lost)]
            if sum(1 for c in live if c.job is not None) >= 2:
                self._forget_lost(me, batch)
                return await self._process_together(me, live, together, debug)
        acks: list[Claimed] = []
        first_ack_at = 0.0
        for index, claimed in enumerate(batch):
            if self._draining or me.stopping:
                # Only the job in hand is finished on drain; the rest go back at once instead of
                # waiting out their lease in a stopped consumer's name (and costing an attempt).
                await self._hand_back(me, [c for c in batch[index:] if c.entry_id not in me.lost])
                break
            if me.lost and claimed.entry_id in me.lost:
                # The heartbeat found the lease gone: another consumer has the job now.
                me.lost.discard(claimed.entry_id)
                me.held.pop(claimed.entry_id, None)
                self._notify()
                continue
            job = claimed.job
            if job is not None:
                metrics.child(metrics.jobs_claimed, job.provider, job.account).inc()
                if debug:
                    log.event(_log, "job.claim", level=logging.DEBUG, consumer=me.name, entry_id=claimed.entry_id,
                              **job.log_fields())
            if acks and trio.current_time() - first_ack_at > ACK_FLUSH_AFTER:
                await self._flush_acks(me, acks)
                acks = []
            if await self._handle_one(me, claimed, debug):
                if not acks:
                    first_ack_at = trio.current_time()
                acks.append(claimed)
        return acks

    def _forget_lost(self, me: _Consumer, batch: list[Claimed]) -> None:
        """Drop the entries of *batch* whose lease the heartbeat found taken: another consumer has them now."""
        for claimed in batch:
            if me.lost and claimed.entry_id in me.lost:
                me.lost.discard(claimed.entry_id)
                me.held.pop(claimed.entry_id, None)
                self._notify()

    async def _process_together(self, me: _Consumer, batch: list[Claimed],
                                handle_batch: Callable[[list[Job]], Awaitable[Sequence[Outcome | BaseException]]],
                                debug: bool) -> list[Claimed]:
        """Hand the jobs of *batch* to the handler's ``handle_batch`` at once; returns the entries to ack.

        Entries without a job are dead-lettered as by :meth:`_handle_one`; a
        job whose result is :class:`~inboundd.outcomes.DependencyDown` goes
        through :meth:`_handle_one`, which waits for the dependency and runs
        the job again.
        """
        ready = [c for c in batch if c.job is not None]
        acks: list[Claimed] = []
        for claimed in batch:
            if claimed.job is None:
                await self._handle_one(me, claimed, debug)
        for claimed in ready:
            job = claimed.job
            assert job is not None
            metrics.child(metrics.jobs_claimed, job.provider, job.account).inc()
            if debug:
                log.event(_log, "job.claim", level=logging.DEBUG, consumer=me.name, entry_id=claimed.entry_id,
                          **job.log_fields())
        started = trio.current_time()
        results: list[Outcome | BaseException]
        try:
            results = list(await handle_batch([c.job for c in ready]))  # type: ignore[misc]
        except Exception as exc:  # classified by decide() for each job; Cancelled passes
            results = [exc] * len(ready)
        if len(results) != len(ready):
            results = [TypeError(f"handle_batch returned {len(results)} results for {len(ready)} jobs")] * len(ready)
        elapsed = trio.current_time() - started
        for claimed, result in zip(ready, results):
            job = claimed.job
            assert job is not None
            metrics.child(metrics.processing_seconds, job.provider).observe(elapsed)
            if isinstance(result, DependencyDown):
                handled = await self._handle_one(me, claimed, debug)
            else:
                if not isinstance(result, (Outcome, BaseException)):
                    result = TypeError(f"handler returned {type(result).__name__}, not an Outcome")
                handled = await self._conclude(me, claimed, job, result, debug)
            if handled:
                acks.append(claimed)
        return acks

    async def _handle_one(self, me: _Consumer, claimed: Claimed, debug: bool = False) -> bool:
        """Handle one entry; True when it should be acked (buffered), else it was settled here."""
        job = claimed.job
        if job is None:
            await self._settle(me, claimed, partial(
                self.queue.dead_letter, me.name, claimed, reason="invalid_payload", error=claimed.error or "",
                attempts=0))
            return False
        while True:
            started = trio.current_time()
            result: Outcome | BaseException
            try:
                result = await self.handler.handle(job)
                if not isinstance(result, Outcome):
                    result = TypeError(f"handler returned {type(result).__name__}, not an Outcome")
            except Exception as exc:  # classified by decide(); Cancelled is BaseException and passes
                result = exc
            metrics.child(metrics.processing_seconds, job.provider).observe(trio.current_time() - started)
            if not isinstance(result, DependencyDown):
                break
            if not await self._wait_for_dependency(me, job, result):
                # Draining or stopping: give the job back as it was rather than hold it through the outage.
                await self._hand_back(me, [claimed])
                return False
        return await self._conclude(me, claimed, job, result, debug)

    async def _conclude(self, me: _Consumer, claimed: Claimed, job: Job, result: Outcome | BaseException,
                        debug: bool) -> bool:
        """Act on a handled job's *result*: True when it is to be acked (buffered), else retried or dead-lettered here."""
        if isinstance(result, Outcome):  # decide() says ack; skip building its Decision
            if debug:
                log.event(_log, "job.handled", level=logging.DEBUG, consumer=me.name, status=result.status,
                          reason=result.reason, **job.log_fields())
            return True
        decision = decide(job, result, self.cfg)
        if decision.action == "retry":
            log.event(_log, "job.failed", level=logging.WARNING, consumer=me.name, kind=decision.kind,
                      error=decision.error[:500], **job.log_fields())
            await self._settle(me, claimed, partial(self.queue.retry, me.name, claimed, decision.job,
                                                    decision.delay, kind=decision.kind))
        else:
            await self._settle(me, claimed, partial(
                self.queue.dead_letter, me.name, claimed, reason=decision.reason, error=decision.error,
                attempts=decision.attempts))
        return False

    async def _wait_for_dependency(self, me: _Consumer, job: Job, down: DependencyDown) -> bool:
        """Wait until *down*'s dependency answers (True), or until a drain or stop begins (False)."""
        metrics.dependency_waits.labels(down.dependency).inc()
        log.event(_log, "consumer.dependency_wait", level=logging.WARNING, consumer=me.name,
                  dependency=down.dependency, error=str(down)[:500], **job.log_fields())
        up = False
        async with trio.open_nursery() as nursery:

            async def wait_up() -> None:
                nonlocal up
                await down.wait_up()
                up = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait_up)
            while not (self._draining or me.stopping):
                await self._changed.wait()
            nursery.cancel_scope.cancel()
        if up:
            log.event(_log, "consumer.dependency_back", consumer=me.name, dependency=down.dependency,
                      **job.log_fields())
        return up

    async def _settle(self, me: _Consumer, claimed: Claimed, operation: Callable[[], Awaitable[bool]]) -> None:
        try:
            await operation()
        except (redis.RedisError, OSError) as exc:
            # The entry stays pending: the reclaim timer hands it out again after the lease.
            log.event(_log, "consumer.settle_failed", level=logging.WARNING, consumer=me.name,
                      entry_id=claimed.entry_id, error=str(exc))
        finally:
            me.held.pop(claimed.entry_id, None)
            me.lost.discard(claimed.entry_id)
            self._notify()

    async def _hand_back(self, me: _Consumer, entries: list[Claimed]) -> None:
        try:
            await self.queue.hand_back(me.name, entries)
        except (redis.RedisError, OSError) as exc:
            # They stay pending: the reclaim timer hands them out again after the lease.
            log.event(_log, "consumer.hand_back_failed", level=logging.WARNING, consumer=me.name,
                      jobs=len(entries), error=str(exc))
        finally:
            for claimed in entries:
                me.held.pop(claimed.entry_id, None)
                me.lost.discard(claimed.entry_id)
            self._notify()

    async def _flush_acks(self, me: _Consumer, acks: list[Claimed]) -> None:
        if not acks:
            return
        try:
            flags = await self.queue.ack(me.name, acks)
        except (redis.RedisError, OSError) as exc:
            log.event(_log, "consumer.ack_failed", level=logging.WARNING, consumer=me.name, jobs=len(acks),
                      error=str(exc))
            flags = [False] * len(acks)
        self._acked(me, acks, flags)

    def _acked(self, me: _Consumer, acks: list[Claimed], flags: list[bool]) -> None:
        """Release *acks* from ``held``; count and log the ones Redis acked (*flags*)."""
        now = clock.wall()
        debug = _log.isEnabledFor(logging.DEBUG)
        held, lost = me.held, me.lost
        for claimed, ok in zip(acks, flags):
            held.pop(claimed.entry_id, None)
            if lost:
                lost.discard(claimed.entry_id)
            job = claimed.job
            if ok and job is not None:
                metrics.child(metrics.jobs_acked, job.provider, job.account).inc()
                metrics.child(metrics.end_to_end_seconds, job.provider).observe(max(0.0, now - job.enqueued_at))
                if debug:
                    log.event(_log, "job.ack", level=logging.DEBUG, consumer=me.name, **job.log_fields())
        self._notify()

    async def _heartbeat(self, me: _Consumer) -> None:
        interval = max(0.1, self.cfg.lease / 3)
        while True:
            await trio.sleep(interval)
            if not me.held:
                continue
            try:
                lost = await self.queue.heartbeat(me.name, list(me.held))
            except (redis.RedisError, OSError) as exc:
                log.event(_log, "consumer.heartbeat_failed", level=logging.WARNING, consumer=me.name, error=str(exc))
                continue
            for entry_id in lost:
                claimed = me.held.get(entry_id)
                if claimed is None:
                    continue  # acked while the heartbeat was on its way: not lost, just done
                me.lost.add(entry_id)
                fields = claimed.job.log_fields() if claimed.job is not None else {}
                log.event(_log, "job.lease_lost", level=logging.WARNING, consumer=me.name, entry_id=entry_id,
                          **fields)
