"""The deliverer on the supervisor: one :class:`~.worker.TargetWorker` per HTTP target, woken by ``NOTIFY``.

:class:`Deliverer` runs in the daemon's worker nursery. At start it takes
back the rows a previous run of this instance left leased (SIGKILL: they
are sent again at once, under the same delivery id, rather than after
their lease), then listens on channel ``inbound_delivery`` on a connection
of its own — the store transaction and ``inboundctl redeliver`` notify the
target whose rows they made — and wakes that target's worker. Every worker
also looks by itself when its next row falls due and every
:data:`~.worker.POLL_INTERVAL`, so a lost notification (or a listener down
with PostgreSQL) only delays. Several daemons may share one outbox: a row
has one owner at a time (``FOR UPDATE SKIP LOCKED`` and a lease).

Python targets have no worker: they run inside the store transaction
(``python.py``). Drain stops claiming and lets requests in flight finish;
:meth:`Deliverer.apply_config` (SIGHUP) starts, retires (drained, then
cancelled) and restarts workers whose target was added, removed or changed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import psycopg
import trio

from .. import log, metrics
from ..backoff import Backoff
from ..store import outbox
from ..store.db import Database
from .targets import Target
from .worker import TargetWorker

__all__ = ["Deliverer"]

_log = log.get_logger("deliver")

#: Reconnect backoff of the LISTEN connection (equal jitter, reset once it stayed up a minute).
LISTEN_RETRY_BASE, LISTEN_RETRY_CAP, LISTEN_HEALTHY_AFTER = 0.5, 30.0, 60.0
#: A retired worker (target removed or changed on reload) gets this long to finish its requests.
RETIRE_GRACE = 30.0


class _Running:
    def __init__(self, worker: TargetWorker, scope: trio.CancelScope) -> None:
        self.worker = worker
        self.scope = scope


class Deliverer:
    """Every HTTP target's worker and the NOTIFY listener that wakes them (see the module docstring)."""

    def __init__(self, db: Database, targets: Sequence[Target], instance: str) -> None:
        self.db = db
        self.instance = instance
        self._targets = [t for t in targets if t.kind != "python"]
        self._running: dict[str, _Running] = {}
        self._retiring: set[TargetWorker] = set()
        self._nursery: trio.Nursery | None = None
        self._draining = False
        self.listening = False

    @property
    def workers(self) -> dict[str, TargetWorker]:
        return {name: running.worker for name, running in self._running.items()}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every worker and the listener until cancelled; reports started once each worker started."""
        await self._take_back_own_leases()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._listen)
            for target in self._targets:
                await self._start(target)
            task_status.started()

    async def _take_back_own_leases(self) -> None:
        try:
            released = await self.db.run(outbox.release_owned, self.instance)
        except Exception as exc:  # noqa: BLE001 - the leases then run out by themselves
            log.event(_log, "delivery.take_back_failed", level=logging.WARNING, error=f"{type(exc).__name__}: {exc}")
            return
        if released:
            log.event(_log, "delivery.taken_back", rows=released, instance=self.instance,
                      note="rows this instance held when it stopped are sent again")

    async def _start(self, target: Target) -> None:
        assert self._nursery is not None
        worker = TargetWorker(target, self.db, self.instance)
        if self._draining:
            worker.drain()
        scope = trio.CancelScope()

        async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await worker.run(task_status=task_status)

        await self._nursery.start(run)
        self._running[target.id] = _Running(worker, scope)

    async def _retire(self, running: _Running) -> None:
        worker = running.worker
        self._retiring.add(worker)
        worker.drain()
        try:
            with trio.move_on_after(RETIRE_GRACE):
                await worker.wait_idle()
        finally:
            running.scope.cancel()
            self._retiring.discard(worker)

    # ------------------------------------------------------------------ NOTIFY

    async def _listen(self) -> None:
        """Wake workers on ``NOTIFY inbound_delivery``; reconnect with backoff (the workers poll meanwhile)."""
        retry = Backoff(LISTEN_RETRY_BASE, LISTEN_RETRY_CAP, healthy_after=LISTEN_HEALTHY_AFTER)
        while True:
            conn: psycopg.Connection[Any] | None = None
            try:
                conn = await trio.to_thread.run_sync(lambda: self.db.connect(autocommit=True))
                await trio.to_thread.run_sync(conn.execute, f"LISTEN {outbox.CHANNEL}")
                retry.connected(trio.current_time())
                self.listening = True
                log.event(_log, "delivery.listening", level=logging.DEBUG, channel=outbox.CHANNEL)
                self._wake_all()  # notifications sent while not listening are lost: look now
                while True:
                    await trio.lowlevel.wait_readable(conn.pgconn.socket)
                    for notification in conn.notifies(timeout=0):
                        running = self._running.get(notification.payload)
                        if running is not None:
                            running.worker.wake()
            except (psycopg.Error, OSError) as exc:
                self.listening = False
                delay = retry.failed(trio.current_time())
                log.event(_log, "delivery.listen_failed", level=logging.WARNING, error=f"{type(exc).__name__}: {exc}",
                          retry_in=round(delay, 3), note="workers keep polling meanwhile")
                await trio.sleep(delay)
            finally:
                self.listening = False
                if conn is not None:
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(conn.close)

    def _wake_all(self) -> None:
        for running in self._running.values():
            running.worker.wake()

    # ------------------------------------------------------------------ drain, reload

    def drain(self) -> None:
        """Stop claiming on every target; requests in flight finish."""
        self._draining = True
        for running in self._running.values():
            running.worker.drain()

    def resume(self) -> None:
        self._draining = False
        for running in self._running.values():
            running.worker.resume()

    async def wait_idle(self) -> None:
        """Return once no request is in flight on any target and every outcome is recorded."""
        for worker in [*self.workers.values(), *self._retiring]:
            await worker.wait_idle()

    async def apply_config(self, targets: Sequence[Target]) -> None:
        """Run the workers of *targets*: start new ones, retire removed ones, restart changed ones."""
        wanted = {t.id: t for t in targets if t.kind != "python"}
        self._targets = list(wanted.values())
        if self._nursery is None:
            return
        for name in list(self._running):
            running = self._running[name]
            if wanted.get(name) != running.worker.target:
                del self._running[name]
                log.event(_log, "delivery.target_retired", target=name,
                          reason="removed" if name not in wanted else "changed")
                self._nursery.start_soon(self._retire, running)
        for name, target in wanted.items():
            if name not in self._running:
                await self._start(target)
                log.event(_log, "delivery.target_started", target=name, kind=target.kind)

    # ------------------------------------------------------------------ reporting

    def status(self) -> dict[str, Any]:
        now = trio.current_time()
        return {"listening": self.listening,
                "targets": [running.worker.status(now) for _, running in sorted(self._running.items())]}

    def summary(self) -> str | None:
        if not self._running:
            return None
        now = trio.current_time()
        paused = sum(1 for r in self._running.values() if r.worker.gate.state(now) != "open")
        return f"deliver: {len(self._running)} target(s)" + (f", {paused} held back" if paused else "")

    async def refresh_gauges(self) -> None:
        """Pending and dead rows per target into the metrics (from PostgreSQL)."""
        rows = await self.db.run(outbox.counts)
        seen = set()
        for row in rows:
            seen.add(row.target)
            metrics.deliveries_pending.labels(row.target).set(row.pending)
            metrics.deliveries_dead.labels(row.target).set(row.dead)
        for target in [t.id for t in self._targets]:
            if target not in seen:
                metrics.deliveries_pending.labels(target).set(0)
                metrics.deliveries_dead.labels(target).set(0)
