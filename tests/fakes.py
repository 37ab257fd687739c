"""Shared test doubles and builders: pointer jobs, test queues, recording stand-ins, metric reads.

One home for what several test modules need, so a test module never imports
another test module.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Sequence

import msgspec
import trio

from inboundd import jobs
from inboundd.config import QueueConfig
from inboundd.jobs import ImapPointer, Job
from inboundd.outcomes import Outcome
from inboundd.queue import Queue
from inboundd.redisio import RedisIO

__all__ = ["QUEUE_PREFIX", "RecordingHandler", "RecordingQueue", "imap_job", "make_queue", "metric_value"]

#: Key prefix of the queues tests build (child processes sharing a test's queue must use it too).
QUEUE_PREFIX = "tq"


def imap_job(uid: int, account: str = "support", *, folder: str = "INBOX", uidvalidity: int = 1,
             tenant: str = "t", **job_fields: Any) -> Job:
    """A new IMAP pointer job; *job_fields* go to :func:`inboundd.jobs.new_job` (``job_id=…``)."""
    pointer = ImapPointer(account=account, folder=folder, uidvalidity=uidvalidity, uid=uid)
    return jobs.new_job(pointer, tenant=tenant, **job_fields)


def make_queue(rio: RedisIO, cfg: QueueConfig, **overrides: Any) -> Queue:
    """A queue on *rio* under :data:`QUEUE_PREFIX`, configured by *cfg* with *overrides* replaced."""
    return Queue(rio, msgspec.structs.replace(cfg, **overrides), prefix=QUEUE_PREFIX)


def metric_value(metric: Any, *labels: str) -> float:
    """The current value of an in-process prometheus counter or gauge (of the child with *labels*)."""
    return (metric.labels(*labels) if labels else metric)._value.get()


class RecordingQueue:
    """A queue stand-in with ``enqueue_many``: records acknowledged jobs; can be told to fail."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.fail: BaseException | None = None
        self.attempts = 0
        #: Called (in the enqueuing task) after each acknowledged batch.
        self.after_ack: Callable[[list[Job]], Any] | None = None

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
        self.attempts += 1
        await trio.lowlevel.checkpoint()
        if self.fail is not None:
            raise self.fail
        batch = list(jobs)
        self.jobs.extend(batch)
        if self.after_ack is not None:
            await self.after_ack(batch)
        return [job.id for job in batch]

    def uids(self, account: str | None = None, folder: str | None = None) -> list[int]:
        return [j.pointer.uid for j in self.jobs  # type: ignore[union-attr]
                if (account is None or j.pointer.account == account)
                and (folder is None or j.pointer.folder == folder)]  # type: ignore[union-attr]


class RecordingHandler:
    """A job handler that records every call and behaves as *behave* says (default: processed)."""

    def __init__(self, behave: Callable[[Job, int], Awaitable[Outcome]] | None = None) -> None:
        self.calls: list[Job] = []
        self.behave = behave

    def uids(self) -> list[int]:
        return [j.pointer.uid for j in self.calls]  # type: ignore[union-attr]

    async def handle(self, job: Job) -> Outcome:
        self.calls.append(job)
        if self.behave is not None:
            return await self.behave(job, sum(1 for j in self.calls if j.id == job.id))
        return Outcome("processed")
