"""One account's subscriptions and delta reconciliation, run by its lease owner.

An :class:`AccountRenewer` per ``[[microsoft]]`` account runs under the
ingress supervisor. It takes the account's lease (one owner across every
daemon sharing Redis; the others stand by) and, while it holds it, for each
configured folder:

* keeps one Graph subscription alive (:func:`~.renewal.plan_subscription`):
  reuses the stored one after a restart, creates one with a fresh random
  ``clientState`` when there is none, renews it at half-life, recreates it
  when Graph lost it (404 on renewal, ``subscriptionRemoved``) or the
  configuration changed its URLs; subscriptions of folders no longer
  configured are deleted;
* reconciles by delta query (:mod:`.delta`): at start (a baseline on first
  start, else catching up whatever happened while no daemon listened), every
  ``delta_interval``, after a ``missed`` lifecycle event, and after a
  subscription had to be recreated. Messages found become pointer jobs; the
  deltaLink is stored in ``inbound_cursors`` only after Redis acknowledged
  them, and only while the lease is still ours.

Lifecycle events reach it through :class:`~.lifecycle.LifecycleRequests`
(:meth:`AccountRenewer.wake` wakes it at once). Failures back off per
account; a refusal of the credentials pauses the account
(``auth_failed``) for :data:`~.account.AUTH_RETRY_INTERVAL`, other accounts
go on. Every subscription write goes through the book, so the webhook knows
a new subscription before Graph can notify it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import trio

from ... import clock, log, metrics
from ...backoff import Backoff
from ...ingress.cursors import CursorStore, StoredCursor
from ...ingress.lease import Lease, lease_keys
from ...ingress.ownership import Ownership
from ...ingress.start import parse_start_from
from ...jobs import MicrosoftPointer, new_job
from ...store import graph_subscriptions as rows
from ...store.graph_subscriptions import SubscriptionRow
from . import delta as delta_mod, proto, renewal
from .account import MicrosoftAccount
from .book import SubscriptionBook
from .graph import GraphError
from .lifecycle import LifecycleRequests

__all__ = ["AccountRenewer", "FolderStatus", "RenewerDeps", "notification_urls"]

_log = log.get_logger("microsoft.renewer")

#: Account lease: the owner renews it every third of this; another daemon takes over within it.
LEASE_TTL = 30.0
#: Failed Graph calls back off from this to that (equal jitter), per account.
RETRY_BASE, RETRY_CAP = 2.0, 300.0
#: While the daemon is not yet serving webhooks, a subscription is not created (Graph's
#: validation handshake would be refused); intake is checked this often meanwhile.
INTAKE_POLL = 0.1
#: Pointer jobs enqueued per Redis round trip during a delta walk.
ENQUEUE_CHUNK = 500


def notification_urls(public_url: str) -> tuple[str, str]:
    """(notificationUrl, lifecycleNotificationUrl) under ``[http] public_url``."""
    base = public_url.rstrip("/")
    return f"{base}/webhooks/microsoft", f"{base}/webhooks/microsoft/lifecycle"


@dataclass(frozen=True)
class RenewerDeps:
    """What every renewer of one daemon shares."""

    db: Any
    rio: Any
    queue: Any
    cursors: CursorStore
    book: SubscriptionBook
    requests: LifecycleRequests
    key_prefix: str
    instance_id: str
    public_url: str
    #: Whether the daemon serves webhooks now (subscriptions are created only then).
    intake_open: Callable[[], bool] = lambda: True
    lease_ttl: float = LEASE_TTL


class FolderStatus(msgspec.Struct, kw_only=True):
    """One folder's subscription and reconciliation, as ``inboundctl status`` shows them."""

    account: str
    folder: str
    tenant: str
    #: The account's state: starting, standby, active, backoff, auth_failed, stopped.
    state: str
    subscription_id: str | None = None
    #: Wall-clock times.
    expires_at: float | None = None
    renewed_at: float | None = None
    renew_failures: int = 0
    last_error: str | None = None
    last_delta_at: float | None = None
    #: Pointer jobs delta reconciliation had acknowledged by Redis since the daemon started.
    delta_enqueued: int = 0
    retry_at: float | None = None
    lease_token: int | None = None


class _Folder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.row: SubscriptionRow | None = None
        self.renew_failures = 0
        self.last_error: str | None = None
        self.last_delta_at: float | None = None
        #: Trio time of the next delta walk.
        self.delta_due = float("-inf")
        self.delta_enqueued = 0
        #: Wall time the delta cursor was last stored by this daemon (bounds a resync).
        self.cursor_saved_at: float | None = None
        self.force_renew = False
        self.force_recreate = False


class AccountRenewer:
    """Subscriptions and delta of one account while its lease is held; see the module docstring."""

    def __init__(self, account: MicrosoftAccount, deps: RenewerDeps) -> None:
        self.account = account
        self.deps = deps
        config = account.config
        self.folders = {name: _Folder(name) for name in config.folders}
        self.start_from = parse_start_from(config.start_from)
        self.notification_url, self.lifecycle_url = notification_urls(deps.public_url)
        self._state = "starting"
        self._error: str | None = None
        #: Passes made while owner (each looks at requests, subscriptions and due walks).
        self.rounds = 0
        self._wake = trio.Event()
        self._backoff = Backoff(RETRY_BASE, RETRY_CAP)
        self._retry_at: float | None = None  # wall time
        self._lease = Lease(deps.rio, lease_keys(deps.key_prefix, "microsoft", account.id),
                            instance=deps.instance_id, ttl=deps.lease_ttl)
        self._ownership = Ownership(
            self._lease, event="microsoft.lease", fields={"account": account.id},
            count=lambda event: metrics.microsoft_lease_events.labels(event).inc(),
            on_standby=lambda: self._set_state("standby"), on_error=self._lease_error, logger=_log,
        )

    # ------------------------------------------------------------------ supervisor interface

    @property
    def state(self) -> str:
        return self._state

    def kick(self) -> None:
        """Retry now: after a reload, or an operator's request."""
        self.account.kick()
        self._retry_at = None
        self.wake()

    def wake(self) -> None:
        """Look at lifecycle requests and plans now (the webhook recorded one)."""
        self._wake.set()

    def close(self) -> None:
        for folder in self.folders:
            try:
                metrics.microsoft_subscription_expiry.remove(self.account.id, folder)
            except KeyError:
                pass

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the account whenever its lease can be had, until cancelled.

        Reports started at once: subscriptions need the daemon's webhook
        routes, which serve only once every task started. On cancellation the
        lease is released (shielded, bounded) so a standby takes over at once.
        """
        task_status.started()
        try:
            await self._ownership.run(self._owned)
        finally:
            await self._ownership.release()
            self._set_state("stopped")

    # ------------------------------------------------------------------ while owner

    async def _owned(self) -> None:
        self._set_state("active")
        await self._load()
        for folder in self.folders.values():
            folder.delta_due = float("-inf")  # catch up whatever happened while nobody owned the account
        while True:
            self._wake = trio.Event()
            try:
                await self._take_requests()
                await self._round()
            except Exception as exc:  # noqa: BLE001 - Graph, Redis, PostgreSQL: back off, never crash the daemon
                self._failed(exc)
            self.rounds += 1
            with trio.move_on_at(self._next_wake()):
                await self._wake.wait()

    async def _load(self) -> None:
        stored = await self.deps.db.run(_rows_of, self.account.id)
        for row in stored:
            folder = self.folders.get(row.folder)
            if folder is None:
                await self._delete(row, reason="folder_removed")
                continue
            folder.row = row
            folder.renew_failures = row.renew_failures
            folder.last_error = row.last_error
            self.deps.book.put(row)
            self._gauge(folder)

    async def _take_requests(self) -> None:
        for folder_name, action in await self.deps.requests.take(self.account.id):
            folder = self.folders.get(folder_name)
            if folder is None:
                continue
            log.event(_log, "microsoft.lifecycle.act", account=self.account.id, folder=folder_name, action=action)
            if action == "renew":
                folder.force_renew = True
            elif action == "recreate":
                folder.force_recreate = True
                folder.delta_due = float("-inf")
            elif action == "resync":
                folder.delta_due = float("-inf")

    async def _round(self) -> None:
        """One pass: every folder's subscription, then every due delta walk."""
        if self._retry_at is not None and clock.wall() < self._retry_at:
            return
        if self.account.paused():
            return
        for folder in self.folders.values():
            await self._keep_subscription(folder)
        for folder in self.folders.values():
            if trio.current_time() >= folder.delta_due:
                await self._reconcile(folder)
        self._retry_at = None
        self._backoff.reset()
        self.account.authenticated()
        if self._state != "active":
            self._set_state("active")

    def _next_wake(self) -> float:
        """Trio time of the next thing to do: a renewal, a delta walk or a retry."""
        now_wall, now = clock.wall(), trio.current_time()
        if self.account.paused():
            return self.account.paused_until
        if self._retry_at is not None:
            return now + max(self._retry_at - now_wall, 0.0)
        candidates = [f.delta_due for f in self.folders.values()]
        for folder in self.folders.values():
            if folder.row is not None:
                plan = renewal.plan_subscription(_stored(folder.row), self._desired(folder), now_wall)
                candidates.append(now + max(plan.at - now_wall, 0.0))
        return min(candidates, default=now + 60.0)

    # ------------------------------------------------------------------ subscriptions

    def _desired(self, folder: _Folder) -> renewal.Desired:
        return renewal.Desired(resource=proto.subscription_resource(self.account.config.mailbox, folder.name),
                               notification_url=self.notification_url, lifecycle_url=self.lifecycle_url)

    async def _keep_subscription(self, folder: _Folder) -> None:
        now = clock.wall()
        stored = _stored(folder.row) if folder.row is not None else None
        plan = renewal.plan_subscription(stored, self._desired(folder), now)
        if folder.force_recreate and folder.row is not None:
            plan = renewal.Plan("recreate", "subscription_removed", now, resync=True)
        elif folder.force_renew and plan.action == "wait":
            plan = renewal.Plan("renew", "reauthorization_required", now)
        if plan.action == "wait":
            return
        if plan.action == "renew":
            assert folder.row is not None
            try:
                await self._renew(folder, plan.reason)
                return
            except GraphError as exc:
                if exc.kind != "not_found":
                    raise
                # Graph no longer has it (expired, deleted): notifications may have been lost.
                plan = renewal.Plan("recreate", "not_found", now, resync=True)
        await self._create(folder, plan)

    async def _renew(self, folder: _Folder, reason: str) -> None:
        row = folder.row
        assert row is not None
        now = clock.wall()
        try:
            info = await self.account.graph.renew_subscription(
                row.subscription_id, renewal.requested_expiry(now, self.account.config.subscription_lifetime))
        except GraphError as exc:
            if exc.kind != "not_found":
                await self._record_failure(folder, exc)
            raise
        folder.force_renew = False
        renewed = row._replace(expires_at=info.expires_at, renewed_at=now, renew_failures=0, last_error=None,
                               fence=self._fence())
        await self._save(folder, renewed)
        metrics.microsoft_subscription_events.labels(self.account.id, "renewed").inc()
        log.event(_log, "microsoft.subscription.renew", account=self.account.id, folder=folder.name,
                  subscription_id=row.subscription_id, reason=reason, expires_at=round(info.expires_at, 3))

    async def _create(self, folder: _Folder, plan: renewal.Plan) -> None:
        while not self.deps.intake_open():
            await trio.sleep(INTAKE_POLL)
        config = self.account.config
        desired = self._desired(folder)
        client_state = secrets.token_urlsafe(48)  # 64 characters; Graph allows 128
        now = clock.wall()
        try:
            info = await self.account.graph.create_subscription(
                resource=desired.resource, notification_url=desired.notification_url,
                lifecycle_url=desired.lifecycle_url, client_state=client_state,
                expires_at=renewal.requested_expiry(now, config.subscription_lifetime),
            )
        except GraphError as exc:
            await self._record_failure(folder, exc)
            raise
        old = folder.row
        row = SubscriptionRow(
            account=config.id, folder=folder.name, subscription_id=info.id, resource=desired.resource,
            notification_url=desired.notification_url, lifecycle_url=desired.lifecycle_url,
            client_state=client_state, tenant_id=self.account.tokens.tenant_id, expires_at=info.expires_at,
            renewed_at=now, fence=self._fence(),
        )
        self.deps.book.put(row)  # before it is stored: Graph may notify at once
        await self._save(folder, row)
        folder.force_recreate = folder.force_renew = False
        event = "created" if old is None else "recreated"
        metrics.microsoft_subscription_events.labels(config.id, event).inc()
        log.event(_log, f"microsoft.subscription.{'create' if old is None else 'recreate'}", account=config.id,
                  folder=folder.name, subscription_id=info.id, reason=plan.reason,
                  expires_at=round(info.expires_at, 3), replaces=old.subscription_id if old else None)
        if plan.resync:
            folder.delta_due = float("-inf")
        if old is not None and old.subscription_id != info.id:
            self.deps.book.forget(old.subscription_id)
            try:
                await self.account.graph.delete_subscription(old.subscription_id)
            except GraphError as exc:  # it expires by itself; its notifications are refused meanwhile
                log.event(_log, "microsoft.subscription.delete_failed", level=logging.WARNING, account=config.id,
                          folder=folder.name, subscription_id=old.subscription_id, error=str(exc))

    async def _save(self, folder: _Folder, row: SubscriptionRow) -> None:
        await self._ownership.confirm()  # only the owner writes; a stale one is stopped here
        await self.deps.db.run(rows.save, row)
        folder.row = row
        folder.renew_failures, folder.last_error = 0, None
        self.deps.book.put(row)
        self._gauge(folder)

    async def _record_failure(self, folder: _Folder, exc: GraphError) -> None:
        folder.renew_failures += 1
        folder.last_error = str(exc)
        metrics.microsoft_renew_failures.labels(self.account.id).inc()
        if folder.row is not None:
            row = folder.row
            with trio.move_on_after(5):
                try:
                    await self.deps.db.run(rows.record_failure, row.account, row.folder, row.subscription_id,
                                           str(exc))
                except Exception as db_exc:  # noqa: BLE001 - the status in memory still shows it
                    log.event(_log, "microsoft.subscription.failure_not_recorded", level=logging.WARNING,
                              account=self.account.id, error=str(db_exc))

    async def _delete(self, row: SubscriptionRow, *, reason: str) -> None:
        """Delete a subscription at Graph and forget it (an unconfigured folder's)."""
        self.deps.book.forget(row.subscription_id)
        await self.account.graph.delete_subscription(row.subscription_id)
        await self._ownership.confirm()
        await self.deps.db.run(rows.delete, row.account, row.folder, row.subscription_id)
        metrics.microsoft_subscription_events.labels(self.account.id, "deleted").inc()
        log.event(_log, "microsoft.subscription.delete", account=row.account, folder=row.folder,
                  subscription_id=row.subscription_id, reason=reason)

    # ------------------------------------------------------------------ delta

    async def _reconcile(self, folder: _Folder) -> None:
        """Walk the folder's delta from its cursor; enqueue what it finds; store the new cursor."""
        cursors, account = self.deps.cursors, self.account
        stored = await cursors.load(account.id, folder.name)
        link = stored.delta_link if stored is not None else None
        now = clock.wall()
        cursor = delta_mod.DeltaCursor(link, folder.cursor_saved_at or now) if link else None
        start = delta_mod.plan_delta(cursor, self.start_from, now)
        try:
            delta_link, enqueued = await self._walk(folder, start)
        except GraphError as exc:
            if exc.kind != "sync_reset":
                raise
            start = delta_mod.plan_resync(folder.cursor_saved_at, now)
            log.event(_log, "microsoft.delta.reset", level=logging.WARNING, account=account.id, folder=folder.name,
                      since=round(start.since or 0, 3), error=str(exc))
            delta_link, enqueued = await self._walk(folder, start)
        await self._ownership.confirm()
        new = StoredCursor(delta_link=delta_link)
        if not await cursors.compare_and_set(account.id, folder.name, stored, new):
            log.event(_log, "microsoft.delta.cursor_moved", level=logging.WARNING, account=account.id,
                      folder=folder.name, note="another walker stored a cursor meanwhile; kept theirs")
        folder.cursor_saved_at = clock.wall()
        folder.last_delta_at = folder.cursor_saved_at
        folder.delta_due = trio.current_time() + account.config.delta_interval
        folder.delta_enqueued += enqueued
        metrics.microsoft_delta_walks.labels(account.id, start.reason).inc()
        log.event(_log, "microsoft.delta.walk", account=account.id, folder=folder.name, reason=start.reason,
                  mode=start.mode, enqueued=enqueued)

    async def _walk(self, folder: _Folder, start: delta_mod.DeltaStart) -> tuple[str, int]:
        """Follow the delta pages of *start* to its deltaLink; returns (deltaLink, jobs enqueued)."""
        graph = self.account.graph
        if start.link is not None:
            page = await graph.delta_page(link=start.link)
        else:
            page = await graph.delta_page(folder=folder.name, since=start.since)
        collected: list[delta_mod.DeltaMessage] = []
        enqueued = 0
        while True:
            if start.mode == "all":
                enqueued += await self._enqueue(folder, [m.id for m in page.messages])
            elif start.mode == "last":
                collected.extend(page.messages)
            if page.delta_link is not None:
                break
            assert page.next_link is not None
            page = await graph.delta_page(link=page.next_link)
        if start.mode == "last":
            enqueued += await self._enqueue(folder, delta_mod.select_baseline(start, collected))
        return page.delta_link, enqueued

    async def _enqueue(self, folder: _Folder, message_ids: list[str]) -> int:
        tenant = self.account.config.tenant
        for offset in range(0, len(message_ids), ENQUEUE_CHUNK):
            chunk = dict.fromkeys(message_ids[offset:offset + ENQUEUE_CHUNK])
            jobs = [new_job(MicrosoftPointer(account=self.account.id, message_id=m, folder=folder.name),
                            tenant=tenant) for m in chunk]
            await self.deps.queue.enqueue_many(jobs)
            metrics.microsoft_delta_enqueued.labels(self.account.id, folder.name).inc(len(jobs))
        return len(dict.fromkeys(message_ids))

    # ------------------------------------------------------------------ failures and state

    def _failed(self, exc: Exception) -> None:
        """Plan the retry after *exc*: a pause for refused credentials, else the account's backoff."""
        message = str(exc) if isinstance(exc, GraphError) else f"{type(exc).__name__}: {exc}"
        kind = exc.kind if isinstance(exc, GraphError) else "unavailable"
        if kind in ("auth", "forbidden"):
            delay = self.account.auth_failed(message)
            self._set_state("auth_failed" if self.account.paused() else "backoff", error=message)
        else:
            delay = self._backoff.failed()
            retry_after = exc.failure.retry_after if isinstance(exc, GraphError) else None
            delay = max(delay, retry_after or 0.0)
            self._set_state("backoff", error=message)
        self._retry_at = clock.wall() + delay
        log.event(_log, "microsoft.renewer.failed", level=logging.WARNING, account=self.account.id, kind=kind,
                  error=message, retry_in=round(delay, 3), exc_info=not isinstance(exc, (GraphError, OSError)))

    def _lease_error(self, message: str) -> None:
        self._set_state("standby", error=message)

    def _set_state(self, state: str, error: str | None = None) -> None:
        if state != self._state:
            log.event(_log, "microsoft.renewer.state", level=logging.DEBUG, account=self.account.id,
                      state=state, before=self._state)
        self._state = state
        self._error = error

    def _fence(self) -> int:
        return self._ownership.token or 0

    def _gauge(self, folder: _Folder) -> None:
        if folder.row is not None:
            metrics.microsoft_subscription_expiry.labels(self.account.id, folder.name).set(
                folder.row.expires_at - clock.wall())

    def refresh_gauges(self) -> None:
        for folder in self.folders.values():
            self._gauge(folder)

    def status(self) -> list[FolderStatus]:
        error = self._error
        out = []
        for folder in self.folders.values():
            row = folder.row
            out.append(FolderStatus(
                account=self.account.id, folder=folder.name, tenant=self.account.config.tenant, state=self._state,
                subscription_id=row.subscription_id if row else None, expires_at=row.expires_at if row else None,
                renewed_at=row.renewed_at if row else None, renew_failures=folder.renew_failures,
                last_error=folder.last_error or error or self.account.auth_error, last_delta_at=folder.last_delta_at,
                delta_enqueued=folder.delta_enqueued, retry_at=self._retry_at, lease_token=self._lease.token,
            ))
        return out


def _stored(row: SubscriptionRow) -> renewal.Stored:
    return renewal.Stored(subscription_id=row.subscription_id, resource=row.resource,
                          notification_url=row.notification_url, lifecycle_url=row.lifecycle_url,
                          expires_at=row.expires_at, renewed_at=row.renewed_at)


def _rows_of(conn: Any, account: str) -> list[SubscriptionRow]:
    return [row for row in rows.list_all(conn) if row.account == account]

