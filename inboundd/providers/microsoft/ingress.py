"""``POST /webhooks/microsoft`` and ``/webhooks/microsoft/lifecycle``: Graph's calls in, pointer jobs out.

The I/O shell around :mod:`.webhook`'s pure checks. For one POST:

1. a ``validationToken`` query parameter is the validation handshake: 200
   ``text/plain`` with the decoded token, before anything else is looked at;
2. the body must be a notification collection (else 400 with the reason);
3. its subscriptions are looked up (:class:`~.book.SubscriptionBook`) and
   every item checked; refused items are counted and logged, never enqueued;
4. genuine change notifications become one :class:`~inboundd.jobs.MicrosoftPointer`
   job each and genuine lifecycle events one request each to the account's
   owner, all written to Redis before the answer: 202 once Redis
   acknowledged everything, 503 (Graph retries) if it did not.

A batch in which nothing is genuine still gets 202: Graph must not retry
forgeries. Both routes accept both kinds of item (Graph allows one URL for
both). Nothing here waits on Graph or on anything slower than one Redis round
trip (and one PostgreSQL query for a subscription another daemon created), so
the answer comes well within Graph's 3 s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import trio

from ... import log, metrics
from ...ingress.webhook import WebhookReply, WebhookRequest
from ...jobs import Job, MicrosoftPointer, new_job
from . import webhook
from .account import MicrosoftAccount
from .book import SubscriptionBook
from .lifecycle import LifecycleRequests

__all__ = ["RETRY_AFTER", "WebhookHandler"]

_log = log.get_logger("microsoft.webhook")

#: Seconds Graph is asked to wait after a 503.
RETRY_AFTER = 5
_NOSNIFF = (("x-content-type-options", "nosniff"), ("cache-control", "no-store"))


class WebhookHandler:
    """Answers Graph's POSTs for every account of one daemon."""

    def __init__(self, *, accounts: Callable[[], Mapping[str, MicrosoftAccount]], book: SubscriptionBook,
                 queue: object, requests: LifecycleRequests, wake: Callable[[str], None]) -> None:
        self._accounts = accounts
        self.book = book
        self.queue = queue
        self.requests = requests
        self._wake = wake

    async def handle(self, request: WebhookRequest) -> WebhookReply:
        """The answer to one POST; see the module docstring. Never raises but ``Cancelled``."""
        started = trio.current_time()
        try:
            return await self._handle(request)
        finally:
            metrics.microsoft_webhook_seconds.observe(trio.current_time() - started)

    async def _handle(self, request: WebhookRequest) -> WebhookReply:
        try:
            token = webhook.validation_token(request.query)
            if token is not None:
                log.event(_log, "microsoft.webhook.handshake", path=request.path)
                return WebhookReply.text(200, token, headers=_NOSNIFF)
            batch = webhook.parse_batch(request.body)
        except webhook.BadRequest as exc:
            metrics.microsoft_notifications.labels("", "malformed").inc()
            log.event(_log, "microsoft.webhook.bad_request", level=logging.WARNING, path=request.path,
                      error=str(exc), size=len(request.body))
            return WebhookReply.json(400, {"error": str(exc)})
        try:
            known = await self.book.lookup({item.subscription_id for item in batch.value})
        except Exception as exc:  # noqa: BLE001 - PostgreSQL unreachable: let Graph retry
            return self._unavailable("subscription lookup", exc, len(batch.value))
        check = webhook.check_batch(batch.value, known)
        for refused in check.refused:
            metrics.microsoft_notifications.labels(refused.account or "", refused.reason).inc()
            log.event(_log, "microsoft.notification.refused", level=logging.WARNING, account=refused.account,
                      subscription_id=refused.subscription_id[:64], reason=refused.reason, path=request.path)
        accounts = self._accounts()
        jobs: list[Job] = []
        for item in check.accepted:
            account = accounts.get(item.subscription.account)
            tenant = account.config.tenant if account is not None else "default"
            jobs.append(new_job(MicrosoftPointer(
                account=item.subscription.account, message_id=item.message_id, folder=item.subscription.folder,
                subscription_id=item.subscription.subscription_id, change_type=item.change_type,
            ), tenant=tenant))
        requests = [(event.subscription.account, event.subscription.folder, event.action) for event in check.lifecycle]
        try:
            if requests:
                await self.requests.put(requests)
            if jobs:
                await self.queue.enqueue_many(jobs)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - Redis did not acknowledge: Graph must retry
            return self._unavailable("enqueue", exc, len(batch.value))
        for event in check.lifecycle:
            metrics.microsoft_notifications.labels(event.subscription.account, "lifecycle").inc()
            metrics.microsoft_lifecycle_events.labels(event.subscription.account, event.event).inc()
            log.event(_log, "microsoft.lifecycle", account=event.subscription.account,
                      folder=event.subscription.folder, lifecycle_event=event.event, action=event.action,
                      subscription_id=event.subscription.subscription_id)
            self._wake(event.subscription.account)
        for item in check.accepted:
            metrics.child(metrics.microsoft_notifications, item.subscription.account, "accepted").inc()
        if jobs and _log.isEnabledFor(logging.DEBUG):
            log.event(_log, "microsoft.notifications.accepted", level=logging.DEBUG, jobs=len(jobs),
                      refused=len(check.refused))
        return WebhookReply(status=202)

    def _unavailable(self, what: str, exc: Exception, items: int) -> WebhookReply:
        log.event(_log, "microsoft.webhook.unavailable", level=logging.WARNING, step=what, items=items,
                  error=f"{type(exc).__name__}: {exc}")
        return WebhookReply.json(503, {"error": f"{what} failed; retry later"},
                                 headers=(("retry-after", str(RETRY_AFTER)),))
