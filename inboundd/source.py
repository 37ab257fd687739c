"""What processing needs from a provider: a pointer in, raw MIME (or why not) out.

The contract sits one floor below ``providers/`` (the implementations), so
processing and the store depend on it without knowing any provider. Every
provider's consume-time half implements :class:`Source`.
``fetch`` returns a :class:`FetchedMessage`, or a :class:`SourceUnavailable`
with a deterministic reason (``source_deleted``, ``source_moved``,
``uidvalidity_changed``, ``oversize``) that the processing layer records as a
*skipped* outcome; it raises for anything worth a retry (server unreachable,
throttled), wrapping infrastructure failures in
:class:`~inboundd.outcomes.TransientError`. ``after_commit`` runs
provider-side post-actions once the message is stored, given the
:class:`~inboundd.outcomes.Outcome` that was committed.

Pure module: no I/O.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

import msgspec

from .jobs import Job
from .outcomes import Outcome

__all__ = ["FetchedMessage", "IngestingSource", "Source", "SourceRegistry", "SourceUnavailable"]


class FetchedMessage(msgspec.Struct, kw_only=True):
    """The raw message and what the provider knows about it."""

    raw: bytes
    #: The provider's own id (IMAP ``UIDVALIDITY:UID``, Graph immutable id, Gmail id).
    provider_message_id: str
    #: IMAP folder, or Graph folder / Gmail labels joined with ``,``.
    folder: str | None = None
    size: int = 0
    internal_date: datetime | None = None
    labels: list[str] = msgspec.field(default_factory=list)


class SourceUnavailable(msgspec.Struct):
    """The pointed-at message cannot be had, deterministically: record *reason* and skip."""

    reason: str
    detail: str = ""


class Source(Protocol):
    async def fetch(self, job: Job, max_size: int) -> FetchedMessage | SourceUnavailable:
        """The raw message *job* points at, or why it cannot be had; raises for anything worth a retry."""
        ...

    async def after_commit(self, job: Job, outcome: Outcome) -> None:
        """Post-actions for the message *job* stored (*outcome* is ``processed``); best effort, never raises."""
        ...


@runtime_checkable
class IngestingSource(Source, Protocol):
    """A source whose provider also queues ingress work: jobs that name no message.

    A Gmail push is queued as "this mailbox changed" and walked at consume
    time into one job per message. Processing hands such a job
    (``job.pointer.names_message`` false) to :meth:`ingest` instead of the
    ledger, fetch and store; the work must be idempotent (it may run again
    after a crash), and it returns the outcome to acknowledge it with, or
    raises like ``fetch``.
    """

    async def ingest(self, job: Job) -> Outcome:
        ...


class SourceRegistry:
    """Sources by provider name (``imap``, ``microsoft``, ``google``)."""

    def __init__(self) -> None:
        self._sources: dict[str, Source] = {}

    def register(self, provider: str, source: Source) -> None:
        self._sources[provider] = source

    def get(self, provider: str) -> Source:
        """The source of *provider*; ``LookupError`` naming it when none is registered."""
        try:
            return self._sources[provider]
        except KeyError:
            raise LookupError(f"no source registered for provider {provider!r}") from None
