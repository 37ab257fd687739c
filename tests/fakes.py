"""Shared test doubles and builders: pointer jobs, test queues, recording stand-ins, metric reads,
and the in-process message source the processing tests store from.

One home for what several test modules need, so a test module never imports
another test module.
"""

from __future__ import annotations

import base64
from typing import Any, Awaitable, Callable, Sequence

import msgspec
import trio

from inboundd import jobs
from inboundd.config import Config, PostgresConfig, ProcessingConfig, QueueConfig, StoreConfig
from inboundd.jobs import ImapPointer, Job
from inboundd.outcomes import Outcome
from inboundd.processing import Processor
from inboundd.queue import Queue
from inboundd.redisio import RedisIO
from inboundd.source import FetchedMessage, SourceRegistry, SourceUnavailable
from inboundd.store.db import Database

__all__ = [
    "ACCOUNT",
    "QUEUE_PREFIX",
    "TENANT",
    "FakeSource",
    "RecordingHandler",
    "RecordingQueue",
    "imap_job",
    "job_for",
    "make_queue",
    "metric_value",
    "mime",
    "processing_config",
    "processor",
]

#: Key prefix of the queues tests build (child processes sharing a test's queue must use it too).
QUEUE_PREFIX = "tq"
#: Tenant and account of the processing fakes' jobs.
TENANT, ACCOUNT = "t1", "support"


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


# --------------------------------------------------------------------------- processing


def mime(n: int, *, message_id: str | None = "default", attachment: bytes | None = None, body: str = "hello") -> bytes:
    """A small message; ``message_id="default"`` gives a unique <n@example.com>."""
    mid = f"<msg-{n}@example.com>" if message_id == "default" else message_id
    head = (f"From: Customer {n} <c{n}@example.com>\r\nTo: support@example.org\r\nSubject: order {n}\r\n"
            "Date: Wed, 8 Nov 2023 10:00:00 +0100\r\nMIME-Version: 1.0\r\n")
    if mid:
        head += f"Message-ID: {mid}\r\n"
    if attachment is None:
        return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n").encode()
    encoded = base64.encodebytes(attachment).decode().replace("\n", "\r\n")
    return (head + 'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\n'
            "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n--b1\r\n"
            'Content-Type: application/pdf; name="invoice.pdf"\r\nContent-Disposition: attachment;'
            ' filename="invoice.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n' + encoded + "--b1--\r\n").encode()


def job_for(uid: int, *, account: str = ACCOUNT, job_id: str | None = None) -> Job:
    """An IMAP job of :data:`TENANT` (UIDVALIDITY 7), as the processing tests hand a :class:`FakeSource`."""
    return imap_job(uid, account, uidvalidity=7, tenant=TENANT, job_id=job_id)


Item = bytes | SourceUnavailable | BaseException | Callable[[Job], Awaitable[Any]]


class FakeSource:
    """An in-process provider: identity → raw bytes, an unavailability, an exception, or a coroutine."""

    def __init__(self) -> None:
        self.items: dict[str, Item] = {}
        #: Size the "provider" reports before download (None: unknown).
        self.reported_size: dict[str, int] = {}
        self.fetches: list[str] = []
        self.committed: list[tuple[str, Any]] = []

    def put(self, job: Job, item: Item) -> None:
        self.items[job.identity()] = item

    async def fetch(self, job: Job, max_size: int) -> FetchedMessage | SourceUnavailable:
        self.fetches.append(job.id)
        item = self.items[job.identity()]
        if callable(item) and not isinstance(item, BaseException):
            item = await item(job)
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, SourceUnavailable):
            return item
        if self.reported_size.get(job.identity(), 0) > max_size:
            return SourceUnavailable("oversize", f"provider reports {self.reported_size[job.identity()]} bytes")
        pointer = job.pointer
        return FetchedMessage(raw=item, provider_message_id=f"{pointer.uidvalidity}:{pointer.uid}",
                              folder=pointer.folder, size=len(item))

    async def after_commit(self, job: Job, outcome: Outcome) -> None:
        self.committed.append((job.id, outcome))


def processing_config(pg_dsn: str = "", *, lease: float = 30.0, fetch_timeout: float = 10.0, dedupe: bool = True,
                      keep_raw: bool = False, max_size: int = 50 * 1024**2) -> Config:
    """A configuration for a Processor on *pg_dsn* (only the processing and store parts matter)."""
    return Config(
        postgres=PostgresConfig(dsn=pg_dsn or "postgresql:///unused"),
        processing=ProcessingConfig(max_message_size=max_size, dedupe_message_id=dedupe,
                                    fetch_timeout=fetch_timeout, lease=lease),
        store=StoreConfig(keep_raw=keep_raw),
    )


def processor(db: Database, source: FakeSource, **cfg: Any) -> Processor:
    """A Processor on *db* fetching IMAP jobs from *source*; *cfg* as for :func:`processing_config`."""
    registry = SourceRegistry()
    registry.register("imap", source)
    return Processor(db, registry, processing_config(**cfg), "test-instance")
