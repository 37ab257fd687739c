"""Gmail at consume time: fetch the message a pointer names, and post-actions after commit.

:class:`GmailSource` is the Gmail implementation of the processing layer's
source contract. For each message pointer it asks ``format=minimal`` first
(labels, ``sizeEstimate``): a message carrying a skip label or larger than
``processing.max_message_size`` is skipped without downloading it. Then
``format=raw``, streamed and abandoned as soon as the answer outgrows the cap.

Failures, by :class:`~.gmail_proto.GmailFailure` kind:

* ``not_found`` → skipped ``source_deleted`` (deleted after the push);
* ``rate_limited`` / ``unavailable`` → :class:`~inboundd.outcomes.TransientError`
  (Gmail's ``Retry-After`` when it sent one);
* ``auth`` (403 ``insufficientPermissions``, ``invalid_grant`` …) →
  :class:`~.tokens.AuthFailure`, the account's auth-failure policy;
* ``invalid`` → a job error (retried, then dead-lettered).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ... import log
from ...jobs import GooglePointer, Job
from ...outcomes import Outcome, TransientError
from ...source import FetchedMessage, SourceUnavailable
from . import gmail_proto as proto
from .accounts import GoogleAccount
from .gmail_api import GmailError, raise_for, raw_answer_cap
from .tokens import AuthFailure

__all__ = ["GmailSource"]

_log = log.get_logger("google.fetch")


class GmailSource:
    """The Gmail source: :meth:`fetch` at consume time, :meth:`after_commit` for post-actions."""

    def __init__(self, accounts: Iterable[GoogleAccount] = ()) -> None:
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

    async def fetch(self, job: Job, max_size: int) -> FetchedMessage | SourceUnavailable:
        """The raw message *job* points at, or why it cannot be had (see the module docstring)."""
        pointer = job.pointer
        assert isinstance(pointer, GooglePointer) and pointer.message_id, "not a Gmail message pointer"
        account = self.account(pointer.account)
        message_id = pointer.message_id
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

        Best effort: the message is committed, so a failure is logged, never raised.
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
            outcome = "source_deleted" if isinstance(exc, GmailError) and exc.kind == "not_found" else "error"
            log.event(_log, "google.post_action.failed", level=logging.WARNING, account=account.id,
                      message=pointer.message_id, action=account.config.post_action, outcome=outcome,
                      error=str(exc), job_id=job.id)
            return
        log.event(_log, "google.post_action", level=logging.DEBUG, account=account.id, message=pointer.message_id,
                  action=account.config.post_action, job_id=job.id)
