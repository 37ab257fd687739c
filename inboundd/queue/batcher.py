"""Enqueue: durable XADDs, with concurrent enqueues coalesced into pipelined batches."""

from __future__ import annotations

import logging
from collections import Counter as _Tally
from typing import Any, Sequence

import redis
import trio

from .. import jobs as jobs_mod, log, metrics
from ..config_schema import QueueConfig
from ..jobs import Job
from ..redisio import RedisIO
from .base import QueueBase, text

__all__ = ["ENQUEUE_BATCH", "Enqueuing", "QueueStopped"]

_log = log.get_logger("queue")

#: Jobs per pipelined XADD batch of the enqueue batcher.
ENQUEUE_BATCH = 512


class QueueStopped(RuntimeError):
    """The enqueue batcher stopped before this enqueue was written."""


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


class Enqueuing(QueueBase):
    """The enqueue side of the queue: :meth:`enqueue`, :meth:`enqueue_many` and the batcher :meth:`run`."""

    def __init__(self, rio: RedisIO, cfg: QueueConfig, *, prefix: str = "inboundd") -> None:
        super().__init__(rio, cfg, prefix=prefix)
        self._requests: list[_Request] = []
        self._wake = trio.Event()
        self._batcher_running = False
        #: Pipelined XADD round trips made by the batcher (for tests and the bench).
        self.enqueue_round_trips = 0

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
                request.result = [text(r) for r in mine]
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
                ids = [text(r) for r in results]
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
