"""What handling a job can end in, and how failures are classified.

The consumer (``consumer.py``) turns these into queue operations:

* a returned :class:`Outcome` (processed, duplicate, skipped) → ack;
* :class:`TransientError` (a provider unreachable, throttling, a lock
  timeout) → retry with backoff *without* counting an attempt, up to the
  generous ``queue.transient_attempts`` ceiling;
* :class:`DependencyDown` (PostgreSQL unreachable: every job would fail the
  same way) → the consumer keeps the job, stops claiming, and runs it again
  as soon as :meth:`DependencyDown.wait_up` returns — no queue round trip, no
  backoff to sit out after the outage, no attempt counted;
* :class:`PermanentError` → dead-letter at once with its reason;
* any other exception → a *job* error: retry with backoff, counting an
  attempt; dead-letter after ``queue.max_attempts``.

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

import msgspec

__all__ = ["DependencyDown", "Outcome", "PermanentError", "TransientError"]


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


class DependencyDown(TransientError):
    """A dependency every job needs (*dependency*, e.g. ``"postgres"``) does not answer.

    *wait_up* returns once it answers again (it probes with its own
    backoff and may wait indefinitely; cancel it to stop waiting).
    """

    def __init__(self, message: str, *, dependency: str, wait_up: Callable[[], Awaitable[None]]) -> None:
        super().__init__(message)
        self.dependency = dependency
        self.wait_up = wait_up


class PermanentError(Exception):
    """Retrying cannot help: dead-letter the job with ``reason`` at once."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
