"""What handling a job can end in, and how failures are classified.

The consumer (``consumer.py``) turns these into queue operations:

* a returned :class:`Outcome` (processed, duplicate, skipped) → ack;
* :class:`TransientError` (PostgreSQL or a provider unreachable, throttling)
  → retry with backoff *without* counting an attempt, up to the generous
  ``queue.transient_attempts`` ceiling;
* :class:`PermanentError` → dead-letter at once with its reason;
* any other exception → a *job* error: retry with backoff, counting an
  attempt; dead-letter after ``queue.max_attempts``.

Pure module: no I/O.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["Outcome", "PermanentError", "TransientError"]


class Outcome(msgspec.Struct, frozen=True):
    """The terminal result of one job, as recorded in the ledger."""

    status: Literal["processed", "duplicate", "skipped"]
    reason: str | None = None
    #: ``inbound_messages.id`` of the stored (or, for a duplicate, the original) message.
    message_row_id: int | None = None


class TransientError(Exception):
    """Infrastructure failed (unreachable, throttled): back off, do not burn an attempt.

    ``retry_after`` (seconds), when the provider said how long to wait.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(Exception):
    """Retrying cannot help: dead-letter the job with ``reason`` at once."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
