"""Enqueue: durable XADDs, with concurrent enqueues coalesced into batches of one script call each."""

from __future__ import annotations

import logging
from collections import Counter as _Tally, deque
from typing import Any, Sequence

import outcome
import redis
import trio

from .. import jobs as jobs_mod, log, metrics
from ..config_schema import QueueConfig
from ..jobs import Job
from ..redisio import RedisIO
from .base import QueueBase, text

__all__ = ["DIRECT_WRITE_MIN", "ENQUEUE_BATCH", "Enqueuing", "QueueStopped"]

_log = log.get_logger("queue")

#: Jobs per batch (one ``enqueue`` script call) of the enqueue batcher.
ENQUEUE_BATCH = 512
#: An ``enqueue_many`` of at least this many jobs is written by its caller's own
#: Redis call: there is nothing to coalesce, and the hand-over to the batcher
#: task would only add a park and a wake.
DIRECT_WRITE_MIN = 128


class QueueStopped(RuntimeError):
    """The enqueue batcher stopped before this enqueue was written."""


class _Request:
    """One caller's payloads, parked until the batcher reschedules its task with the ids or an error."""

    __slots__ = ("payloads", "task", "taken")

    def __init__(self, payloads: list[bytes], task: trio.lowlevel.Task) -> None:
        self.payloads = payloads
        self.task = task
        #: The batcher took it into a batch: from then on the caller waits for the write.
        self.taken = False


class Enqueuing(QueueBase):
    """The enqueue side of the queue: :meth:`enqueue`, :meth:`enqueue_many` and the batcher :meth:`run`."""

    def __init__(self, rio: RedisIO, cfg: QueueConfig, *, prefix: str = "inboundd") -> None:
        super().__init__(rio, cfg, prefix=prefix)
        self._requests: deque[_Request] = deque()
        self._wake = trio.Event()
        self._batcher_running = False
        #: Redis calls made to write enqueued jobs (for tests and the bench).
        self.enqueue_round_trips = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The enqueue batcher: coalesces concurrent enqueues into one ``enqueue`` script call per batch.

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
                        request = self._requests.popleft()
                        request.taken = True
                        batch.append(request)
                        size += len(request.payloads)
                    await self._write(batch)
        finally:
            self._batcher_running = False
            pending, self._requests = self._requests, deque()
            for request in pending:
                trio.lowlevel.reschedule(request.task, outcome.Error(QueueStopped("the enqueue batcher stopped")))

    def _xadd_many(self, client: redis.Redis, payloads: Sequence[bytes]) -> list[Any]:
        self.enqueue_round_trips += 1
        return self.scripts.enqueue(keys=[self.keys.stream], args=payloads, client=client)

    async def _xadd_many_direct(self, payloads: Sequence[bytes]) -> list[Any]:
        # The same script call as _xadd_many, sent from the trio thread: no thread hop per batch.
        self.enqueue_round_trips += 1
        script = self.scripts.enqueue
        try:
            return await self.rio.call_direct("EVALSHA", script.sha, "1", self.keys.stream, *payloads)
        except redis.exceptions.NoScriptError:
            return await self.rio.call_direct("EVAL", script.script, "1", self.keys.stream, *payloads)

    async def _write(self, batch: list[_Request]) -> None:
        payloads = [p for request in batch for p in request.payloads] if len(batch) > 1 else batch[0].payloads
        try:
            if self.rio.direct is not None:
                ids = await self._xadd_many_direct(payloads)
            else:
                ids = await self.rio.run(self._xadd_many, payloads)
        except BaseException as exc:
            # Cancelled before the write (waiting for a thread): its callers learn that
            # nothing was accepted instead of waiting forever.
            error = QueueStopped("the enqueue batcher stopped") if isinstance(exc, trio.Cancelled) else exc
            for request in batch:
                trio.lowlevel.reschedule(request.task, outcome.Error(error))
            if not isinstance(exc, Exception):
                raise
            return
        pos = 0
        for request in batch:
            end = pos + len(request.payloads)
            trio.lowlevel.reschedule(request.task, outcome.Value(ids[pos:end]))
            pos = end

    async def _through_batcher(self, payloads: list[bytes]) -> list[Any]:
        """Hand *payloads* to the batcher and park until it wrote them (or failed).

        Cancelled while still queued, the request is withdrawn (nothing was
        written); once the batcher took it, cancellation waits for the write.
        """
        request = _Request(payloads, trio.lowlevel.current_task())
        self._requests.append(request)
        self._wake.set()

        def abort(_: Any) -> trio.lowlevel.Abort:
            if request.taken:
                return trio.lowlevel.Abort.FAILED
            self._requests.remove(request)
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

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
        encode = jobs_mod.encode
        payloads = [encode(self._check(job)) for job in jobs]
        if not payloads:
            return []
        try:
            if self._batcher_running and len(payloads) < DIRECT_WRITE_MIN:
                replies = await self._through_batcher(payloads)
            else:
                replies = await self.rio.run(self._xadd_many, payloads)
        except Exception as exc:
            metrics.enqueue_failures.inc(len(payloads))
            log.event(_log, "job.enqueue_failed", level=logging.WARNING, jobs=len(payloads), error=str(exc),
                      **({"job_id": jobs[0].id, "account": jobs[0].account} if len(jobs) == 1 else {}))
            raise
        ids = [text(r) for r in replies]
        if len(jobs) == 1:
            metrics.child(metrics.jobs_enqueued, jobs[0].provider, jobs[0].account).inc()
        else:
            for (provider, account), n in _Tally((job.provider, job.account) for job in jobs).items():
                metrics.child(metrics.jobs_enqueued, provider, account).inc(n)
        if _log.isEnabledFor(logging.DEBUG):
            for job, entry_id in zip(jobs, ids):
                log.event(_log, "job.enqueue", level=logging.DEBUG, entry_id=entry_id, **job.log_fields())
        return ids

    @staticmethod
    def _check(job: Job) -> Job:
        if not isinstance(job, Job):
            raise TypeError(f"expected a Job, got {type(job).__name__}")
        return job
