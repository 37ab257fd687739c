"""IMAP ingress: one listener task per (account, folder), and the group that owns them all.

A listener's life::

    standby ──(lease acquired)──▶ connecting ──▶ catching_up ──▶ idle ⇄ catching_up
       ▲                              │  ▲                         (or polling ⇄ catching_up)
       └──(lease lost)────────────────┤  └──(delay)── backoff / auth_failed ◀──(any failure)
                                      ▼
                                   stopped (cancelled, drained, removed)

* **Catch-up** runs after every (re)connect and on every EXISTS:
  ``UID SEARCH UID <last+1>:*`` from the cursor in ``inbound_cursors``, one
  pointer job per new UID in UID order, and the cursor advances only after
  Redis acknowledged the batch. A crash anywhere therefore re-enqueues at
  most one batch, which the ledger deduplicates; nothing is skipped.
* **IDLE** waits on socket readability in trio (no thread per mailbox),
  re-issues IDLE before ``idle_refresh``, and every ``examine_interval``
  (whatever the server said meanwhile: keepalives prove the connection, not
  the folder), or at once after an untagged NO about the mailbox, ends IDLE
  and EXAMINEs the folder again, each bounded by ``read_timeout``: a dead connection surfaces
  as a failure and a reconnect, a replaced folder as a new UIDVALIDITY.
* **Failures** of any kind (network, TLS, login, folder, Redis, PostgreSQL,
  even a bug) end the session and are retried with backoff — per listener,
  so one failing account or folder never affects the others. A session
  that ended because Redis or PostgreSQL stopped answering is not the IMAP
  server's failure: the listener waits for that dependency (one probe loop
  shared by the daemon, ``availability.Dependencies``) and reconnects as
  soon as it answers, its reconnect backoff untouched — so neither a long
  outage nor one shortly before an IMAP server restart leaves it sitting
  out minutes of backoff afterwards.
* **Ownership**: with a lease configured, a listener first takes the
  mailbox's Redis lease and stops listening the moment it cannot prove it
  still holds it (``ingress.ownership``).
"""

from __future__ import annotations

import imaplib
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import msgspec
import trio

from ... import clock, log, metrics
from ...availability import Dependencies
from ...backoff import Backoff
from ...ingress.auth import AuthPolicy
from ...ingress.cursors import CursorStore, StoredCursor
from ...ingress.lease import Lease, lease_keys
from ...ingress.ownership import Ownership
from ...ingress.supervisor import Supervisor, run_reporting_started
from ...jobs import ImapPointer, Job, new_job
from ...outcomes import DependencyDown
from . import proto
from .conn import (
    AuthError,
    Connection,
    ConnectionLost,
    ImapAccount,
    ImapError,
    Selected,
    default_limiter,
    describe,
)

__all__ = ["ImapListener", "ImapListenerGroup", "ListenerStatus"]

_log = log.get_logger("imap")

#: UIDs enqueued per Redis round trip (and per cursor write) during a catch-up.
ENQUEUE_BATCH = 500
#: A connection that stayed up this long resets the reconnect backoff.
HEALTHY_AFTER = 60.0
#: A listener still connecting after this long reports started anyway (state ``connecting``):
#: a black-holed server must not hold up the daemon's start-up.
STARTUP_REPORT_AFTER = 10.0

# States worth an INFO line; the idle ⇄ catching_up flapping stays at DEBUG.
_QUIET_STATES = {"idle", "catching_up", "polling"}


class Enqueuer(Protocol):
    async def enqueue_many(self, jobs: Sequence[Job]) -> Any: ...


def _imap_cursor(stored: StoredCursor | None) -> proto.Cursor | None:
    if stored is None or stored.uidvalidity is None or stored.last_uid is None:
        return None
    return proto.Cursor(stored.uidvalidity, stored.last_uid)


class ListenerStatus(msgspec.Struct, kw_only=True):
    """One listener as ``inboundctl status`` and ``/metrics`` see it."""

    account: str
    folder: str
    tenant: str
    state: str
    #: Wall time the current state was entered.
    since: float
    #: Wall time the server last told us something (EXISTS, a keepalive, a catch-up, an EXAMINE answer).
    last_event_at: float | None = None
    uidvalidity: int | None = None
    last_uid: int | None = None
    #: Pointer jobs this listener had acknowledged by Redis since the daemon started.
    enqueued: int = 0
    reconnects: int = 0
    last_error: str | None = None
    #: When the next attempt is due (backoff, auth_failed), wall time.
    retry_at: float | None = None
    #: ``idle`` or ``poll`` once connected.
    mode: str | None = None
    #: Fencing token of the held mailbox lease (None: no lease, or not the owner).
    lease_token: int | None = None
    #: Sessions that failed in a row (0 once listening again): a listener reconnecting after failures
    #: is not listening, even while its state says ``connecting``.
    failures: int = 0


class ImapListener:
    """Watches one folder of one account and enqueues a pointer job per new message.

    Start with ``await nursery.start(listener.run)``; see :meth:`run`.
    """

    def __init__(
        self,
        account: ImapAccount,
        folder: str,
        *,
        queue: Enqueuer,
        cursors: CursorStore,
        limiter: trio.CapacityLimiter,
        lease: Lease | None = None,
        dependencies: Dependencies | None = None,
    ) -> None:
        self.account = account
        self.dependencies = dependencies
        self.folder = folder
        self.queue = queue
        self.cursors = cursors
        self.limiter = limiter
        self.lease = lease
        cfg = account.config
        self._start_from = proto.parse_start_from(cfg.start_from)
        self._policy = AuthPolicy(
            cfg.auth_failure_limit, cfg.auth_retry_interval,
            Backoff(cfg.reconnect_base, cfg.reconnect_cap, healthy_after=HEALTHY_AFTER),
        )
        self._state = "stopped"
        self._since = clock.wall()
        self._cursor: proto.Cursor | None = None
        self._enqueued = 0
        self._reconnects = 0
        self._last_error: str | None = None
        self._last_event_at: float | None = None
        self._retry_at: float | None = None
        self._mode: str | None = None
        self._failures = 0
        self._kick = trio.Event()
        self._ready = trio.Event()
        self._ownership = None if lease is None else Ownership(
            lease, event="imap.lease", fields={"account": account.id, "folder": folder},
            count=lambda event: metrics.imap_lease_events.labels(event).inc(),
            on_standby=self._standby, on_error=self._lease_error, describe=describe, logger=_log,
        )
        metrics.listeners.labels(self._state).inc()

    # ------------------------------------------------------------------ public

    @property
    def key(self) -> tuple[str, str]:
        return (self.account.id, self.folder)

    @property
    def state(self) -> str:
        return self._state

    def status(self) -> ListenerStatus:
        """A snapshot of this listener (plain struct, safe to encode)."""
        cursor = self._cursor
        return ListenerStatus(
            account=self.account.id, folder=self.folder, tenant=self.account.config.tenant,
            state=self._state, since=self._since, last_event_at=self._last_event_at,
            uidvalidity=cursor.uidvalidity if cursor else None, last_uid=cursor.last_uid if cursor else None,
            enqueued=self._enqueued, reconnects=self._reconnects, last_error=self._last_error,
            retry_at=self._retry_at, mode=self._mode,
            lease_token=self.lease.token if self.lease is not None else None, failures=self._failures,
        )

    def kick(self) -> None:
        """Retry now: ends a backoff or ``auth_failed`` wait, or triggers a poll (SIGHUP)."""
        self._kick.set()

    def close(self) -> None:
        """Forget this listener in the state gauge (after its last run ended)."""
        metrics.listeners.labels(self._state).dec()
        self._state = "closed"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; never returns otherwise and never raises but ``Cancelled``.

        Reports started as soon as the listener is useful or known not to be:
        caught up and in IDLE/polling, in ``backoff`` or ``auth_failed`` after
        a failed first attempt, or in ``standby`` behind another daemon's
        lease — so a daemon's start-up never hangs on a broken account.

        On cancellation: IDLE is ended with DONE, LOGOUT is sent and the lease
        released, all shielded and bounded by a couple of seconds; then the
        state is ``stopped``.
        """
        self._ready = trio.Event()
        try:
            await run_reporting_started(self._main, self._ready, report_after=STARTUP_REPORT_AFTER,
                                        task_status=task_status)
        finally:
            if self._ownership is not None:
                await self._ownership.release()
            self._retry_at = None
            self._mode = None
            self._set_state("stopped")

    async def _main(self) -> None:
        if self._ownership is None:
            return await self._connect_loop()
        await self._ownership.run(self._connect_loop)

    def _standby(self) -> None:
        self._set_state("standby")
        self._report_started()

    def _lease_error(self, message: str) -> None:
        self._last_error = message

    # ------------------------------------------------------------------ connection loop

    async def _connect_loop(self) -> None:
        first = True
        while True:
            if not first:
                self._reconnects += 1
                metrics.listener_reconnects.labels(self.account.id, self.folder).inc()
            first = False
            self._retry_at = None
            self._set_state("connecting")
            try:
                await self._session()
            except AuthError as exc:
                retry = self._policy.auth_failed(str(exc), trio.current_time())
                metrics.imap_auth_failures.labels(self.account.id).inc()
            except Exception as exc:  # noqa: BLE001 — isolation: nothing here may kill the group
                down = self.dependencies.down(exc) if self.dependencies is not None else None
                if down is not None:
                    await self._wait_for_dependency(down)
                    continue
                retry = self._policy.failed(describe(exc), trio.current_time())
                if not isinstance(exc, (OSError, ConnectionLost)) and not _is_imap_error(exc):
                    log.event(_log, "imap.listener.error", level=logging.WARNING, exc_info=True,
                              account=self.account.id, folder=self.folder, error=describe(exc))
            self._last_error = retry.error
            self._failures += 1
            self._mode = None
            self._retry_at = clock.wall() + retry.delay
            self._set_state(retry.state)
            log.event(_log, "imap.listener.retry", level=logging.WARNING, account=self.account.id,
                      folder=self.folder, state=retry.state, delay=round(retry.delay, 3), error=retry.error)
            self._report_started()
            await self._wait(retry.delay)

    async def _wait_for_dependency(self, down: DependencyDown) -> None:
        """The session ended because *down*'s dependency stopped answering: wait until it answers again.

        The IMAP server did not fail, so its reconnect backoff is left alone
        and the next session starts as soon as the dependency answers.
        Cancellation is honoured at once.
        """
        self._last_error = str(down)
        self._failures += 1
        self._mode = None
        self._retry_at = None
        self._set_state("backoff")
        metrics.dependency_waits.labels(down.dependency).inc()
        log.event(_log, "imap.listener.dependency_wait", level=logging.WARNING, account=self.account.id,
                  folder=self.folder, dependency=down.dependency, error=str(down))
        self._report_started()
        await down.wait_up()
        log.event(_log, "imap.listener.dependency_back", account=self.account.id, folder=self.folder,
                  dependency=down.dependency)

    async def _wait(self, delay: float) -> None:
        """Sleep *delay* seconds, or until :meth:`kick`."""
        with trio.move_on_after(delay):
            await self._kick.wait()
        self._kick = trio.Event()

    async def _session(self) -> None:
        conn = await Connection.open(self.account, self.limiter)
        try:
            self._policy.logged_in(trio.current_time())
            selected = await conn.select(self.folder, readonly=True)
            # The database is the truth on every (re)connect: another daemon may have moved it.
            self._cursor = _imap_cursor(await self.cursors.load(self.account.id, self.folder))
            self._set_state("catching_up")
            await self._catch_up(conn, selected, fresh=True)
            if self.account.config.idle and conn.has_idle:
                self._mode = "idle"
                await self._idle_loop(conn, selected)
            else:
                self._mode = "poll"
                await self._poll_loop(conn, selected)
        finally:
            await conn.aclose()

    async def _catch_up(self, conn: Connection, selected: Selected, *, fresh: bool) -> None:
        """Enqueue every UID above the cursor, advancing the cursor batch by batch after each ack.

        *fresh*: the SELECT just happened, so its UIDNEXT is current.
        """
        previous = self._set_state("catching_up")
        plan = proto.plan_search(self._cursor, selected.uidvalidity, selected.uidnext if fresh else None,
                                 self._start_from)
        if plan.reason != "resume":
            if plan.reason != "first_start":
                metrics.imap_uidvalidity_changes.labels(self.account.id, self.folder).inc()
            log.event(_log, "imap.catch_up.rescan" if plan.reason != "first_start" else "imap.catch_up.first_start",
                      level=logging.WARNING if plan.reason != "first_start" else logging.INFO,
                      account=self.account.id, folder=self.folder, reason=plan.reason,
                      cursor=_fmt_cursor(self._cursor), uidvalidity=selected.uidvalidity,
                      uidnext=selected.uidnext, start_from=self.account.config.start_from)
        while True:
            found, announced = await conn.search_uids(plan.criteria) if plan.criteria else ([], False)
            result = proto.plan_catch_up(plan, found)
            for uids, cursor in proto.batches(result, ENQUEUE_BATCH):
                if uids:
                    jobs = [self._job(selected.uidvalidity, uid) for uid in uids]
                    await self.queue.enqueue_many(jobs)
                    self._enqueued += len(uids)
                    metrics.imap_pointers_enqueued.labels(self.account.id, self.folder).inc(len(uids))
                if cursor != self._cursor:
                    await self._save_cursor(cursor)
            if result.uids:
                log.event(_log, "imap.catch_up.enqueued", level=logging.DEBUG, account=self.account.id,
                          folder=self.folder, count=len(result.uids), first=result.uids[0], last=result.uids[-1])
            if not announced:
                break
            # Mail arrived during the SEARCH: it is not announced again in IDLE, so search on.
            plan = proto.plan_search(self._cursor, selected.uidvalidity, None, self._start_from)
        self._last_event_at = clock.wall()
        if previous in ("idle", "polling"):
            self._set_state(previous)

    def _job(self, uidvalidity: int, uid: int) -> Job:
        pointer = ImapPointer(account=self.account.id, folder=self.folder, uidvalidity=uidvalidity, uid=uid)
        return new_job(pointer, tenant=self.account.config.tenant)

    async def _save_cursor(self, cursor: proto.Cursor) -> None:
        if self._ownership is not None:
            # Fencing: a paused owner whose lease moved on must not write the
            # new owner's cursor back (the jobs it enqueued are harmless
            # duplicates the ledger absorbs; a cursor write is not).
            await self._ownership.confirm()
        stored = StoredCursor(uidvalidity=cursor.uidvalidity, last_uid=cursor.last_uid)
        await self.cursors.save(self.account.id, self.folder, stored)
        self._cursor = cursor

    async def _reselect(self, conn: Connection) -> Selected:
        """EXAMINE the folder again: proves the connection alive and sees a replaced folder.

        A folder deleted and recreated, or renamed away and recreated, under
        a selected session is not always announced (Dovecot keeps the session
        on the renamed mailbox and says nothing during IDLE), and STATUS on the
        selected mailbox may answer from the stale session. Opening it again
        by name shows its current UIDVALIDITY and UIDNEXT.
        """
        selected = await conn.select(self.folder, readonly=True)
        self._last_event_at = clock.wall()
        return selected

    async def _idle_loop(self, conn: Connection, selected: Selected) -> None:
        cfg = self.account.config
        poll_every = cfg.poll_interval if cfg.poll_with_idle else math.inf
        next_poll = trio.current_time() + poll_every
        # Keepalives ("* OK Still here") prove the connection, not the folder: the folder is
        # opened again every examine_interval whatever the server says in between.
        next_reselect = trio.current_time() + cfg.examine_interval
        while True:
            events = proto.classify_untagged(await conn.idle_start())
            self._set_state("idle")
            self._report_started()
            began = trio.current_time()
            probe = False
            while not events.new_mail and events.bye is None and events.trouble is None:
                deadline = min(began + cfg.idle_refresh, next_reselect, next_poll)
                now = trio.current_time()
                if now >= deadline:
                    probe = now >= next_reselect
                    break
                lines = await conn.idle_wait(deadline - now)
                if lines:
                    self._last_event_at = clock.wall()
                    events = _merge(events, proto.classify_untagged(lines))
            # DONE must be answered within read_timeout: a dead connection fails here.
            events = _merge(events, proto.classify_untagged(await conn.idle_done()))
            if events.bye is not None:
                raise ConnectionLost(f"server said BYE: {events.bye}")
            if probe or events.trouble is not None or trio.current_time() >= next_poll:
                if events.trouble is not None:
                    log.event(_log, "imap.listener.server_trouble", level=logging.WARNING,
                              account=self.account.id, folder=self.folder, message=events.trouble)
                # examine_interval passed, a complaint about the mailbox, or the safety-net poll:
                # open the folder again (also our liveness probe) and catch up from it.
                selected = await self._reselect(conn)
                await self._catch_up(conn, selected, fresh=True)
                next_poll = trio.current_time() + poll_every
                next_reselect = trio.current_time() + cfg.examine_interval
            elif events.new_mail:
                await self._catch_up(conn, selected, fresh=False)

    async def _poll_loop(self, conn: Connection, selected: Selected) -> None:
        self._set_state("polling")
        self._report_started()
        while True:
            await self._wait(self.account.config.poll_interval)
            # EXAMINE again rather than NOOP + SEARCH on the old selection: it also
            # notices a folder that was replaced (new UIDVALIDITY) since the last poll.
            selected = await self._reselect(conn)
            await self._catch_up(conn, selected, fresh=True)

    # ------------------------------------------------------------------ bookkeeping

    def _report_started(self) -> None:
        self._ready.set()

    def _set_state(self, state: str) -> str:
        previous = self._state
        if state == previous:
            return previous
        metrics.listeners.labels(previous).dec()
        metrics.listeners.labels(state).inc()
        self._state = state
        if state in ("idle", "polling"):
            self._failures = 0
        self._since = clock.wall()
        log.event(_log, "imap.listener.state", level=logging.DEBUG if state in _QUIET_STATES else logging.INFO,
                  account=self.account.id, folder=self.folder, state=state, previous=previous)
        return previous


def _merge(a: proto.IdleEvents, b: proto.IdleEvents) -> proto.IdleEvents:
    return proto.IdleEvents(new_mail=a.new_mail or b.new_mail, bye=a.bye if a.bye is not None else b.bye,
                            trouble=a.trouble if a.trouble is not None else b.trouble)


def _fmt_cursor(cursor: proto.Cursor | None) -> str:
    return f"{cursor.uidvalidity}:{cursor.last_uid}" if cursor else "none"


def _is_imap_error(exc: BaseException) -> bool:
    return isinstance(exc, (ImapError, imaplib.IMAP4.error))


# ---------------------------------------------------------------------- the group


class ImapListenerGroup:
    """Owns every IMAP listener of a daemon: start, reload, drain, resume, status.

    Construct with the accounts (``accounts_from_config(cfg)``), a queue
    with ``enqueue_many``, a :class:`~inboundd.ingress.cursors.CursorStore`,
    and — for mailbox ownership across daemons — a ``RedisIO`` plus the key
    prefix and this daemon's instance id. Then ``await nursery.start(group.run)``.
    One listener per (account, folder), kept by the ingress supervisor.
    """

    def __init__(
        self,
        accounts: Iterable[ImapAccount],
        *,
        queue: Enqueuer,
        cursors: CursorStore,
        rio: Any = None,
        key_prefix: str = "inboundd",
        instance_id: str = "inboundd",
        limiter: trio.CapacityLimiter | None = None,
        dependencies: Dependencies | None = None,
    ) -> None:
        self.queue = queue
        self.dependencies = dependencies
        self.cursors = cursors
        self.rio = rio
        self.key_prefix = key_prefix
        self.instance_id = instance_id
        #: Shared by every listener: bounds threads, not mailboxes (IDLE holds no thread).
        self.limiter = limiter or default_limiter()
        self._accounts: dict[str, ImapAccount] = {a.id: a for a in accounts}
        self._listeners: Supervisor[tuple[str, str], ImapAccount, ImapListener] = Supervisor(
            _wanted(self._accounts.values()), make=self._make_listener, fingerprint=_listener_fingerprint,
        )

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every listener until cancelled.

        Reports started once every listener reported started (connected and
        caught up, or in backoff/auth_failed/standby). On cancellation every
        listener logs out and releases its lease (shielded, bounded) before
        this returns.
        """
        await self._listeners.run(task_status=task_status)

    def status(self) -> list[ListenerStatus]:
        """Every listener's status, sorted by (account, folder)."""
        return [listener.status() for _, listener in self._listeners.tasks()]

    def summary(self) -> dict[str, int]:
        """Listener count per state."""
        counts: dict[str, int] = {}
        for _, listener in self._listeners.tasks():
            counts[listener.state] = counts.get(listener.state, 0) + 1
        return counts

    def kick(self) -> None:
        """Retry every listener in backoff/auth_failed now, and poll the polling ones (SIGHUP)."""
        self._listeners.kick()

    async def drain(self) -> None:
        """Stop intake: every listener logs out and releases its lease; returns when all stopped.

        Listeners stay listed (state ``stopped``) until :meth:`resume`.
        """
        await self._listeners.drain()

    async def resume(self) -> None:
        """Start every listener again after :meth:`drain`; returns once all reported started."""
        await self._listeners.resume()

    async def update(self, accounts: Iterable[ImapAccount]) -> None:
        """Apply a reloaded configuration (SIGHUP).

        Listeners of removed accounts or folders stop; new ones start;
        listeners whose account settings or password changed restart; the
        unchanged ones are kicked, so an ``auth_failed`` account retries at
        once. Returns once new listeners reported started.
        """
        new = {a.id: a for a in accounts}
        old = self._accounts
        self._accounts = new
        wanted = _wanted(new.values())
        stale = await self._listeners.update(wanted)
        log.event(_log, "imap.group.updated", accounts=len(new), removed=len(set(old) - set(new)),
                  added=len(set(new) - set(old)), restarted=len([k for k in stale if k in wanted]),
                  listeners=len(self._listeners))

    # ------------------------------------------------------------------ internals

    def _make_listener(self, key: tuple[str, str], account: ImapAccount) -> ImapListener:
        folder = key[1]
        lease = None
        if self.rio is not None and account.config.lease > 0:
            lease = Lease(self.rio, lease_keys(self.key_prefix, "imap", account.id, folder),
                          instance=self.instance_id, ttl=account.config.lease)
        return ImapListener(account, folder, queue=self.queue, cursors=self.cursors,
                            limiter=self.limiter, lease=lease, dependencies=self.dependencies)


def _wanted(accounts: Iterable[ImapAccount]) -> dict[tuple[str, str], ImapAccount]:
    wanted: dict[tuple[str, str], ImapAccount] = {}
    for account in accounts:
        for folder in dict.fromkeys(account.config.folders):
            wanted[(account.id, folder)] = account
    return wanted


def _listener_fingerprint(account: ImapAccount) -> tuple[Any, ...]:
    # Adding or removing another folder of the same account does not restart this one.
    config = msgspec.to_builtins(account.config)
    config.pop("folders", None)
    return (config, account.password)
