"""Gmail at consume time: walk a push into message jobs, fetch a message, post-actions after commit.

:class:`GmailSource` is the Gmail implementation of the processing layer's
source contract (``inboundd.source.IngestingSource``):

* a push job (no message id) goes to :meth:`GmailSource.ingest`, which hands
  it to the history walker (``walk.HistoryWalker``);
* a message job goes to :meth:`GmailSource.fetch`: ``format=minimal`` first
  (labels, ``sizeEstimate``), so a message carrying a skip label or larger
  than ``processing.max_message_size`` is skipped without downloading it;
  then ``format=raw``, streamed and abandoned as soon as the answer outgrows
  the cap.

Failures, by :class:`~.proto.GmailFailure` kind:

* ``not_found`` → skipped ``source_deleted`` (deleted after the push);
* ``rate_limited`` / ``unavailable`` → :class:`~inboundd.outcomes.TransientError`
  (Gmail's ``Retry-After`` when it sent one);
* ``auth`` (403 ``insufficientPermissions``, ``invalid_grant`` …) → the
  account's auth-failure policy (``ingress.auth.AccountPause``): the account is
  paused, its jobs wait (a ``TransientError`` until the pause ends) without
  calling Google, and other accounts go on;
* ``invalid`` → a job error (retried, then dead-lettered).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ... import clock, log, metrics
from ...jobs import GooglePointer, Job
from ...outcomes import Outcome, TransientError
from ...source import FetchedMessage, SourceUnavailable
from . import proto
from .accounts import GoogleAccount
from .gmail_api import GmailError, raise_for, raw_answer_cap
from .tokens import AuthFailure
from .walk import HistoryWalker

__all__ = ["GmailSource", "refused"]

_log = log.get_logger("google.fetch")


def paused(account: GoogleAccount) -> None:
    """Raise a ``TransientError`` for the rest of the pause when the account's credentials were refused."""
    wait = account.auth.paused_for(clock.wall())
    if wait is not None:
        raise TransientError(f"Gmail account {account.id!r} is paused: Google refused its credentials "
                             f"({account.auth.error})", retry_after=wait)


def refused(account: GoogleAccount, exc: AuthFailure) -> TransientError:
    """Pause *account* after Google refused its credentials; the error to raise (waits out the pause)."""
    delay = account.auth.refused(exc.reason, clock.wall())
    metrics.google_auth_failures.labels(account.id, exc.reason).inc()
    log.event(_log, "google.auth_failed", level=logging.ERROR, account=account.id, reason=exc.reason,
              detail=exc.detail, paused_for=round(delay))
    return TransientError(f"Gmail account {account.id!r}: Google refused its credentials ({exc})",
                          retry_after=delay)


class GmailSource:
    """The Gmail source: :meth:`ingest` for pushes, :meth:`fetch` for messages, :meth:`after_commit`."""

    def __init__(self, accounts: Iterable[GoogleAccount] = (), *, walker: HistoryWalker | None = None) -> None:
        self.walker = walker
        self._accounts: dict[str, GoogleAccount] = {}
        self.update(accounts)

    def update(self, accounts: Iterable[GoogleAccount]) -> None:
        """Use a reloaded account list (jobs in flight finish with the account they started with)."""
        self._accounts = {account.id: account for account in accounts}

    def account(self, account_id: str) -> GoogleAccount:
        account = self._accounts.get(account_id)
        if account is None:
            # Not a skip: the account may come back with the next reload.
            raise LookupError(f"Gmail account {account_id!r} is not configured")
        return account

    async def ingest(self, job: Job) -> Outcome:
        """Walk the mailbox a push named (see ``walk.HistoryWalker.on_push``); ack with what happened."""
        pointer = job.pointer
        assert isinstance(pointer, GooglePointer) and not pointer.message_id, "not a Gmail push job"
        account = self.account(pointer.account)
        assert self.walker is not None, "GmailSource built without a walker"
        paused(account)
        try:
            result = await self.walker.on_push(account, pointer.history_id, pubsub_message_id=pointer.pubsub_message_id)
        except AuthFailure as exc:
            raise refused(account, exc) from exc
        account.auth.worked(clock.wall())
        return Outcome("processed", f"history_{result}")

    async def fetch(self, job: Job, max_size: int) -> FetchedMessage | SourceUnavailable:
        """The raw message *job* points at, or why it cannot be had (see the module docstring)."""
        pointer = job.pointer
        assert isinstance(pointer, GooglePointer) and pointer.message_id, "not a Gmail message pointer"
        account = self.account(pointer.account)
        paused(account)
        try:
            result = await self._fetch(account, pointer.message_id, max_size)
        except AuthFailure as exc:
            raise refused(account, exc) from exc
        except TransientError:
            metrics.google_fetches.labels(account.id, "unavailable").inc()
            raise
        account.auth.worked(clock.wall())
        outcome = "fetched" if isinstance(result, FetchedMessage) else result.reason
        metrics.google_fetches.labels(account.id, outcome).inc()
        return result

    async def _fetch(self, account: GoogleAccount, message_id: str,
                     max_size: int) -> FetchedMessage | SourceUnavailable:
        try:
            meta = await account.api.message_meta(message_id)
            skip = proto.check_fetch(meta, account.config.skip_labels, max_size)
            if skip is not None:
                return SourceUnavailable(*skip)
            answer = await account.api.message_raw(message_id, raw_answer_cap(max_size))
        except GmailError as exc:
            if exc.kind == "not_found":
                return SourceUnavailable("source_deleted", f"Gmail message {message_id} no longer exists")
            raise_for(exc, account.id)
            raise
        if answer is None:
            return SourceUnavailable("oversize", f"raw answer larger than {raw_answer_cap(max_size)} bytes "
                                                 f"(max_message_size {max_size})")
        raw = proto.decode_raw(answer.get("raw"))
        labels = [label for label in answer.get("labelIds") or [] if isinstance(label, str)]
        return FetchedMessage(
            raw=raw,
            provider_message_id=message_id,
            folder=",".join(labels) or None,
            size=len(raw),
            internal_date=proto.internal_date(answer),
            labels=labels,
        )

    async def after_commit(self, job: Job, outcome: Outcome) -> None:
        """Apply the account's ``post_action`` to the message this job stored.

        Best effort: the message is committed, so a failure is logged and
        counted (``inboundd_google_post_actions_total{outcome="error"}``), never raised.
        """
        pointer = job.pointer
        if not isinstance(pointer, GooglePointer) or not pointer.message_id:
            return
        if outcome.status != "processed":
            return
        account = self._accounts.get(pointer.account)
        if account is None or account.post_action.kind == "none":
            return
        action = account.post_action
        result = "done"
        try:
            label_id = None
            if action.kind == "label":
                if account.post_label_id is None:
                    account.post_label_id = await account.api.label_id(action.label)
                label_id = account.post_label_id
            body = proto.modify_body(action, label_id)
            if body is not None:
                await account.api.modify(pointer.message_id, body)
        except (GmailError, AuthFailure, TransientError) as exc:
            result = "source_deleted" if isinstance(exc, GmailError) and exc.kind == "not_found" else "error"
            log.event(_log, "google.post_action.failed", level=logging.WARNING, account=account.id,
                      message=pointer.message_id, action=account.config.post_action, outcome=result,
                      error=str(exc), job_id=job.id)
        else:
            log.event(_log, "google.post_action", level=logging.DEBUG, account=account.id,
                      message=pointer.message_id, action=account.config.post_action, job_id=job.id)
        metrics.google_post_actions.labels(account.id, action.kind, result).inc()
