"""Graph at consume time: the raw MIME a pointer names, and post-actions after commit.

:class:`MicrosoftSource` is the Graph implementation of
:class:`~inboundd.source.Source`. ``fetch`` streams ``GET
users/{mailbox}/messages/{id}/$value`` (immutable id) with the size cap
enforced before the whole body is read. Outcomes:

* a message Graph no longer has (404 ``ErrorItemNotFound``) → skipped
  ``source_deleted``; over ``processing.max_message_size`` → skipped
  ``oversize``: deterministic, never a retry loop;
* throttled (429) or failing (5xx, unreachable) →
  :class:`~inboundd.outcomes.TransientError` honouring ``Retry-After``: the
  job waits without burning an attempt;
* credentials refused even with a fresh token (401, 403, or Azure AD
  refusing the secret) → the account is paused (``auth_failed``, visible in
  status) and its jobs wait as transient errors without calling Graph until
  the pause ends; other accounts go on;
* anything else → a job error (counted attempt, dead-letter in the end).

Post-actions (``mark_read``, ``move:<folder>``) run from :meth:`after_commit`,
only for a message this job stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import trio

from ... import log, metrics
from ...jobs import Job, MicrosoftPointer
from ...outcomes import Outcome, TransientError
from ...source import FetchedMessage, SourceUnavailable
from .account import MicrosoftAccount
from .graph import GraphError, Oversize

__all__ = ["MicrosoftSource"]

_log = log.get_logger("microsoft.fetch")


class MicrosoftSource:
    """The Graph ``Source``: :meth:`fetch` at consume time, :meth:`after_commit` for post-actions."""

    def __init__(self, accounts: Callable[[], Mapping[str, MicrosoftAccount]]) -> None:
        self._accounts = accounts

    def _account(self, job: Job) -> tuple[MicrosoftAccount, MicrosoftPointer]:
        pointer = job.pointer
        assert isinstance(pointer, MicrosoftPointer), f"not a Microsoft pointer: {type(pointer).__name__}"
        account = self._accounts().get(pointer.account)
        if account is None:
            # Not a skip: the account may come back with the next reload; the retry and
            # dead-letter path keeps the job visible and redrivable.
            raise LookupError(f"Microsoft account {pointer.account!r} is not configured")
        return account, pointer

    async def fetch(self, job: Job, max_size: int) -> FetchedMessage | SourceUnavailable:
        """The raw message *job* points at, or why it cannot be had; see the module docstring."""
        account, pointer = self._account(job)
        if account.paused():
            metrics.microsoft_fetches.labels(account.id, "auth_failed").inc()
            raise TransientError(f"Microsoft account {account.id!r} is paused: {account.auth_error}",
                                 retry_after=max(account.paused_until - trio.current_time(), 1.0))
        try:
            result = await account.graph.fetch_mime(pointer.message_id, max_size)
        except GraphError as exc:
            return self._failed(account, exc)
        account.authenticated()
        if isinstance(result, Oversize):
            metrics.microsoft_fetches.labels(account.id, "oversize").inc()
            return SourceUnavailable("oversize", result.describe())
        metrics.microsoft_fetches.labels(account.id, "fetched").inc()
        return FetchedMessage(raw=result, provider_message_id=pointer.message_id, folder=pointer.folder or None,
                              size=len(result))

    def _failed(self, account: MicrosoftAccount, exc: GraphError) -> SourceUnavailable:
        kind = exc.kind
        if kind == "not_found":
            metrics.microsoft_fetches.labels(account.id, "source_deleted").inc()
            return SourceUnavailable("source_deleted", exc.failure.describe())
        if kind in ("throttled", "unavailable"):
            metrics.microsoft_fetches.labels(account.id, kind).inc()
            raise TransientError(str(exc), retry_after=exc.failure.retry_after) from exc
        if kind in ("auth", "forbidden"):
            pause = account.auth_failed(str(exc))
            metrics.microsoft_fetches.labels(account.id, "auth_failed").inc()
            log.event(_log, "microsoft.auth_failed", level=logging.WARNING, account=account.id, error=str(exc),
                      paused_for=round(pause, 3))
            raise TransientError(str(exc), retry_after=pause) from exc
        metrics.microsoft_fetches.labels(account.id, "error").inc()
        raise exc

    async def after_commit(self, job: Job, outcome: Outcome) -> None:
        """Apply the account's ``post_action`` to the committed message; best effort, never raises.

        Called only after this job's transaction stored the message. A
        failure is logged and counted
        (``inboundd_microsoft_post_actions_total{outcome="error"}``).
        """
        if outcome.status != "processed":
            return
        try:
            account, pointer = self._account(job)
        except LookupError:
            return
        action = account.post_action
        if action.kind == "none":
            return
        outcome_label = "done"
        try:
            if action.kind == "mark_read":
                await account.graph.mark_read(pointer.message_id)
            else:
                await account.graph.move(pointer.message_id, action.folder)
        except GraphError as exc:
            outcome_label = "source_deleted" if exc.kind == "not_found" else "error"
            log.event(_log, "microsoft.post_action.failed", level=logging.WARNING, account=account.id,
                      action=action.kind, error=str(exc), job_id=job.id)
        else:
            log.event(_log, "microsoft.post_action", level=logging.DEBUG, account=account.id, action=action.kind,
                      job_id=job.id)
        metrics.microsoft_post_actions.labels(account.id, action.kind, outcome_label).inc()
