"""One task per Gmail account: keep its watch alive, and walk its history even when no push comes.

A renewer's life::

    standby ──(lease acquired)──▶ starting ──▶ watching ⇄ (renew daily, walk every resync_interval)
       ▲                              │  ▲
       └──(lease lost)────────────────┤  └──(delay)── backoff / auth_failed ◀──(a failed users.watch)
                                      ▼
                                   stopped (cancelled, drained, removed)

* **Ownership**: one daemon per mailbox renews and walks on schedule (the
  shared lease of ``ingress.ownership``, key ``{prefix}:google:lease:<account>``);
  the others stand by. Pushes are taken by every daemon and walked by
  whichever consumer gets them.
* **Watch**: ``users.watch`` (topic, ``label_ids``) when the lease is taken,
  then once a day (Google: at least every 7 days), earlier if the watch would
  expire first. Its historyId starts a mailbox that has no cursor yet (old
  mail is not imported); a mailbox that has one is walked at once, so mail
  that arrived while no daemon ran is enqueued.
* **Resync walk** every ``resync_interval``: a walk as if a push had come
  (Pub/Sub may drop pushes; Gmail sends at most one per second per user).
* **Failures** of ``users.watch`` back off (5 s doubling to 10 min); a
  refusal of the credentials pauses the account (``ingress.auth.AccountPause``).
  A watch with no success for 48 h shows as ``stale`` in status: watch
  expiry is otherwise silent.

Scheduling runs on trio's clock (tests drive it with ``MockClock``); what is
shown (last renewal, expiry) is wall-clock time.
"""

from __future__ import annotations

import logging
from typing import Literal

import msgspec
import trio

from ... import clock, log, metrics
from ...backoff import Backoff
from ...ingress.lease import Lease
from ...ingress.ownership import Ownership
from ...ingress.supervisor import run_reporting_started
from ...outcomes import TransientError
from . import proto
from .accounts import GoogleAccount
from .gmail_api import GmailError, raise_for
from .source import refused
from .tokens import AuthFailure
from .walk import HistoryWalker

__all__ = ["LEASE_TTL", "RENEWER_STATES", "WatchRenewer", "WatchStatus"]

_log = log.get_logger("google.watch")

RenewerState = Literal["starting", "watching", "standby", "backoff", "auth_failed", "stopped", "closed"]
#: Every state a renewer reports, in the order of its life.
RENEWER_STATES = ("starting", "watching", "standby", "backoff", "auth_failed", "stopped")

#: The watch lease: the owner renews it every third of this; after a crash another daemon takes over within it.
LEASE_TTL = 30.0
#: Retries of a failed users.watch.
RETRY_BASE, RETRY_CAP = 5.0, 600.0
#: A renewer still starting after this long reports started anyway (Gmail unreachable must not hold up start-up).
STARTUP_REPORT_AFTER = 10.0


class WatchStatus(msgspec.Struct, kw_only=True):
    """One account's renewer, as the status document shows it (wall-clock times)."""

    account: str
    email: str
    tenant: str
    state: str
    since: float
    #: ``ok``, ``stale`` (no renewal within 48 h), ``expired``, ``never``: see proto.watch_health.
    watch: str
    watch_expiration: float | None = None
    last_renewal: float | None = None
    history_id: int | None = None
    last_walk_at: float | None = None
    error: str | None = None
    retry_at: float | None = None
    lease_token: int | None = None


class WatchRenewer:
    """The watch and the scheduled walks of one account; start with ``await nursery.start(renewer.run)``."""

    def __init__(self, account: GoogleAccount, *, walker: HistoryWalker, lease: Lease | None) -> None:
        self.account = account
        self.walker = walker
        self.lease = lease
        self._state: RenewerState = "stopped"
        self._since = clock.wall()
        self.last_renewal: float | None = None
        self.expiration: float | None = None
        self.history_id: int | None = None
        self.last_walk_at: float | None = None
        self._error: str | None = None
        self._retry_at: float | None = None
        self._kick = trio.Event()
        self._ready = trio.Event()
        self._ownership = None if lease is None else Ownership(
            lease, event="google.lease", fields={"account": account.id},
            count=lambda event: metrics.google_lease_events.labels(event).inc(),
            on_standby=self._standby, on_error=self._lease_error, logger=_log,
        )

    # ------------------------------------------------------------------ public

    @property
    def state(self) -> str:
        return self._state

    def status(self) -> WatchStatus:
        health = proto.watch_health(self.last_renewal, self.expiration, clock.wall())
        return WatchStatus(
            account=self.account.id, email=self.account.config.email, tenant=self.account.config.tenant,
            state=self._state, since=self._since, watch="standby" if self._state == "standby" else health,
            watch_expiration=self.expiration, last_renewal=self.last_renewal, history_id=self.history_id,
            last_walk_at=self.last_walk_at, error=self._error or self.account.auth.error, retry_at=self._retry_at,
            lease_token=self.lease.token if self.lease is not None else None,
        )

    def kick(self) -> None:
        """Retry now: ends a backoff or ``auth_failed`` wait (SIGHUP, ``inboundctl``)."""
        self.account.auth.kick()
        self._kick.set()

    def close(self) -> None:
        """Forget this renewer's gauges (after its last run ended)."""
        self._state = "closed"
        for gauge in (metrics.google_watch_expiry, metrics.google_watch_renewed):
            try:
                gauge.remove(self.account.id)
            except KeyError:
                pass

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew and walk until cancelled; never raises but ``Cancelled``.

        Reports started once the first users.watch answered (or failed), in
        ``standby`` behind another daemon's lease, or after
        :data:`STARTUP_REPORT_AFTER`. On cancellation the lease is released
        (shielded, bounded) and the state is ``stopped``; the watch stays, so
        pushes keep arriving for whichever daemon runs next.
        """
        self._ready = trio.Event()
        try:
            await run_reporting_started(self._main, self._ready, report_after=STARTUP_REPORT_AFTER,
                                        task_status=task_status)
        finally:
            if self._ownership is not None:
                await self._ownership.release()
            self._retry_at = None
            self._set_state("stopped")

    # ------------------------------------------------------------------ the loop

    async def _main(self) -> None:
        if self._ownership is None:
            return await self._owned()
        await self._ownership.run(self._owned)

    def _standby(self) -> None:
        self._set_state("standby")
        self._ready.set()

    def _lease_error(self, message: str) -> None:
        self._error = message

    async def _owned(self) -> None:
        self._set_state("starting")
        backoff = Backoff(RETRY_BASE, RETRY_CAP)
        # Watch at once, then walk at once (mail that came while no daemon ran), then on schedule.
        renew_at = walk_at = trio.current_time()
        resync = self.account.config.resync_interval
        while True:
            now = trio.current_time()
            if now >= renew_at:
                renew_at = trio.current_time() + await self._renew(backoff)
                self._ready.set()
            elif now >= walk_at:
                walk_at = now + resync  # counted from the start: walks keep their period whatever they take
                await self._walk()
            else:
                await self._sleep_until(min(renew_at, walk_at))
                if self._kick.is_set():
                    self._kick = trio.Event()
                    if self._state in ("backoff", "auth_failed"):
                        renew_at = trio.current_time()

    async def _sleep_until(self, deadline: float) -> None:
        with trio.move_on_at(deadline):
            await self._kick.wait()

    async def _renew(self, backoff: Backoff) -> float:
        """One users.watch; returns the seconds until the next one (renewal, or retry after a failure)."""
        account = self.account
        config = account.config
        wait = account.auth.paused_for(clock.wall())
        if wait is not None:
            self._fail("auth_failed", account.auth.error or "credentials refused", wait)
            return wait
        if self._ownership is not None:
            await self._ownership.confirm()
        try:
            try:
                result = await account.api.watch(config.topic, config.label_ids)
            except GmailError as exc:
                raise_for(exc, account.id)
                raise
        except AuthFailure as exc:
            delay = refused(account, exc).retry_after or RETRY_CAP
            metrics.google_watch_renewals.labels(account.id, "auth_failed").inc()
            self._fail("auth_failed", f"{exc.reason}: {exc.detail}" if exc.detail else exc.reason, delay)
            return delay
        except (TransientError, GmailError, proto.GmailFormatError) as exc:
            delay = backoff.failed(trio.current_time())
            metrics.google_watch_renewals.labels(account.id, "error").inc()
            self._fail("backoff", str(exc), delay)
            return delay
        now = clock.wall()
        account.auth.worked(now)
        backoff.reset()
        self.last_renewal, self.expiration, self._error, self._retry_at = now, result.expiration, None, None
        metrics.google_watch_renewals.labels(account.id, "ok").inc()
        metrics.google_watch_expiry.labels(account.id).set(result.expiration)
        metrics.google_watch_renewed.labels(account.id).set(now)
        log.event(_log, "google.watch.renewed", account=account.id, history_id=result.history_id,
                  expires_in=round(result.expiration - now))
        try:
            if await self.walker.baseline(account, result.history_id):
                self.history_id = result.history_id
        except Exception as exc:  # noqa: BLE001 - PostgreSQL down: the first walk or push sets it
            log.event(_log, "google.cursor.baseline_failed", level=logging.WARNING, account=account.id,
                      error=f"{type(exc).__name__}: {exc}")
        self._set_state("watching")
        return proto.next_watch_renewal(now, result.expiration, now)

    async def _walk(self) -> None:
        """The scheduled walk (as if a push had come); failures are logged, the schedule goes on."""
        account = self.account
        if account.auth.paused_for(clock.wall()) is not None:
            return
        try:
            await self.walker.on_push(account, 0)
        except AuthFailure as exc:
            refused(account, exc)
            return
        except Exception as exc:  # noqa: BLE001 - the next push or scheduled walk tries again
            log.event(_log, "google.walk.failed", level=logging.WARNING, account=account.id,
                      error=f"{type(exc).__name__}: {exc}")
            return
        self.last_walk_at = clock.wall()
        cursor = await self._cursor()
        if cursor is not None:
            self.history_id = cursor

    async def _cursor(self) -> int | None:
        try:
            stored = await self.walker.cursors.load(self.account.id, "")
        except Exception:  # noqa: BLE001 - status only
            return self.history_id
        return stored.history_id if stored else None

    def _fail(self, state: RenewerState, error: str, delay: float) -> None:
        self._error = error
        self._retry_at = clock.wall() + delay
        self._set_state(state)
        log.event(_log, "google.watch.failed", level=logging.WARNING, account=self.account.id, state=state,
                  error=error, retry_in=round(delay, 1))

    def _set_state(self, state: RenewerState) -> None:
        if state != self._state:
            self._state = state
            self._since = clock.wall()
            log.event(_log, "google.renewer.state", level=logging.DEBUG, account=self.account.id, state=state)
