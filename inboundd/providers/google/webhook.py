"""``POST /webhooks/google``: an authenticated Pub/Sub push in, one push job durably queued, then 204.

The order is the contract (PROVIDERS-NOTES B2):

1. the bearer token is verified before anything else is looked at
   (``verify.PushVerifier``): a missing or bad token is 401, a well-signed
   token for another audience or sender 403 — and nothing else happens: no
   Redis, no Gmail call;
2. the body is decoded (``push.decode_push``); undecodable data, an unknown
   mailbox, or a mailbox whose configured audience and service account are
   not the token's, is acknowledged with 204 and counted — Pub/Sub would
   otherwise redeliver it forever and slow the whole subscription down;
3. the push becomes one job (``GooglePointer`` without a message id: "this
   mailbox changed up to historyId"), and 204 is answered only once Redis
   acknowledged it; if it did not, 503 with ``Retry-After``, so Pub/Sub retries.

Pushes are not walked here: the walk runs at consume time, where pushes for
one mailbox coalesce (``walk.HistoryWalker``), so this answers in a Redis
round trip whatever the mailbox holds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from ... import log, metrics
from ...ingress.webhook import WebhookReply, WebhookRequest
from ...jobs import GooglePointer, Job, new_job
from . import push
from .accounts import GoogleAccount
from .verify import CertsUnavailable, PushVerifier

__all__ = ["PushIngress", "allowed_senders"]

_log = log.get_logger("google.push")

#: Seconds Pub/Sub is asked to wait after a 503 (it retries on its own schedule anyway).
RETRY_AFTER = "10"


class Enqueuer(Protocol):
    async def enqueue(self, job: Job) -> str: ...


def allowed_senders(accounts: Iterable[GoogleAccount]) -> dict[str, frozenset[str]]:
    """``push_audience`` → the ``push_service_account``\\ s configured with it."""
    senders: dict[str, set[str]] = {}
    for account in accounts:
        senders.setdefault(account.config.push_audience, set()).add(account.config.push_service_account)
    return {audience: frozenset(emails) for audience, emails in senders.items()}


def _ignored(reason: str, **fields: object) -> WebhookReply:
    metrics.google_pushes.labels("ignored", reason).inc()
    log.event(_log, "google.push.ignored", level=logging.WARNING, reason=reason, **fields)
    return WebhookReply(status=204)


class PushIngress:
    """Answers pushes for the configured accounts; :meth:`update` after a reload."""

    def __init__(self, verifier: PushVerifier, queue: Enqueuer, accounts: Sequence[GoogleAccount] = ()) -> None:
        self.verifier = verifier
        self.queue = queue
        self._by_email: Mapping[str, GoogleAccount] = {}
        self.update(accounts)

    def update(self, accounts: Sequence[GoogleAccount]) -> None:
        self._by_email = {account.config.email.lower(): account for account in accounts}
        self.verifier.allowed = allowed_senders(accounts)

    async def handle(self, request: WebhookRequest) -> WebhookReply:
        """Answer one push; see the module docstring. Cancellation: nothing is left half done."""
        try:
            claims = await self.verifier.verify(request.header("authorization"))
        except push.PushRejected as rejected:
            metrics.google_pushes.labels("rejected", rejected.reason).inc()
            log.event(_log, "google.push.rejected", level=logging.WARNING, status=rejected.status,
                      reason=rejected.reason, detail=rejected.detail)
            headers = (("www-authenticate", f'Bearer error="invalid_token", error_description="{rejected.reason}"'),) \
                if rejected.status == 401 else ()
            return WebhookReply.json(rejected.status, {"error": rejected.reason}, headers=headers)
        except CertsUnavailable as exc:
            metrics.google_pushes.labels("unavailable", "certs").inc()
            log.event(_log, "google.push.unverifiable", level=logging.ERROR, error=str(exc))
            return WebhookReply.json(503, {"error": "cannot verify push tokens now"},
                                     headers=(("retry-after", RETRY_AFTER),))
        try:
            notice = push.decode_push(request.body)
        except push.PushDataError as bad:
            return _ignored(bad.reason, detail=bad.detail)
        account = self._by_email.get(notice.email_address.lower())
        if account is None:
            return _ignored("unknown_mailbox", email=notice.email_address, subscription=notice.subscription)
        if (account.config.push_audience, account.config.push_service_account) != (claims.audience, claims.email):
            # Signed by Google for a sender we know, but configured for another mailbox.
            return _ignored("not_this_mailbox", account=account.id, audience=claims.audience, sender=claims.email)
        job = new_job(GooglePointer(account=account.id, email=account.config.email, history_id=notice.history_id,
                                    pubsub_message_id=notice.message_id), tenant=account.config.tenant)
        try:
            await self.queue.enqueue(job)
        except Exception as exc:  # noqa: BLE001 - any failure to enqueue is a nack: Pub/Sub redelivers
            metrics.google_pushes.labels("unavailable", "enqueue").inc()
            log.event(_log, "google.push.enqueue_failed", level=logging.ERROR, account=account.id,
                      history_id=notice.history_id, error=f"{type(exc).__name__}: {exc}")
            return WebhookReply.json(503, {"error": "could not queue the push; retry"},
                                     headers=(("retry-after", RETRY_AFTER),))
        metrics.child(metrics.google_pushes, "enqueued", "").inc()
        if _log.isEnabledFor(logging.DEBUG):
            log.event(_log, "google.push.enqueued", level=logging.DEBUG, account=account.id, job_id=job.id,
                      history_id=notice.history_id, pubsub_message_id=notice.message_id)
        return WebhookReply(status=204)
