"""One target's sender: claim due outbox rows, POST them, record what happened.

:class:`TargetWorker` runs three kinds of task in its own nursery:

* the **claim loop** keeps a buffer of the target's oldest due rows,
  leased in batches (one transaction that also reads their messages and
  builds the bodies, ``payload.py``) whenever it is half empty, and starts
  one send task per row as the gate allows (``gate.py``: the target's
  concurrency, one probe, or none). Rows it holds but has not sent are
  handed back, their attempt uncounted, when the gate pauses or on drain.
  With nothing due it sleeps until the next row is due, a ``NOTIFY``
  wakes it (:meth:`TargetWorker.wake`), a request ends, or the fallback
  poll (:data:`POLL_INTERVAL`) passes;
* a **send task** per row: the request (``wire.py``), the verdict, the
  gate's update, metrics and the ``delivery.*`` log event;
* the **recorder** writes every outcome that arrived meanwhile in one
  transaction (``outbox.record``), retrying PostgreSQL failures with the
  one backoff. When a delivery ends an outage it also makes the rows that
  failed during it due again, before the claim loop takes anything newer,
  so the backlog drains oldest first.

Drain (:meth:`TargetWorker.drain`) stops claiming; :meth:`TargetWorker.wait_idle`
returns once no request is in flight and every outcome is recorded.
Cancellation (shutdown past the grace) abandons requests in flight: their
rows stay leased until the lease (the ``timeout`` of each request a row may
wait behind, plus :data:`LEASE_MARGIN`) ends,
or until this instance restarts and takes them back, and are then sent again
under the same delivery id. Outcomes already answered are still recorded
(shielded, bounded).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import deque
from contextlib import AsyncExitStack
from typing import Any, NamedTuple

import httpx
import trio

from .. import __version__, clock, log, metrics
from ..backoff import Backoff
from ..ingress.httpclients import ssl_context
from ..store import messages, outbox
from ..store.db import Database
from .gate import Gate
from .payload import webhook_body
from .targets import Target
from .wire import (
    UNAVAILABLE_STATUSES, HttpRequest, Verdict, action_mailbox_request, judge_failure, judge_response, next_step,
    webhook_request,
)

__all__ = ["LEASE_MARGIN", "MIN_PREFETCH", "POLL_INTERVAL", "TargetWorker"]

_log = log.get_logger("deliver")

#: A claimed row's lease outlives its request's timeout by this much (recording included).
LEASE_MARGIN = 30.0
#: Claimed rows kept ready for the next free request slot: the concurrency, at least this many.
#: A claim tops the buffer up once it is half empty, so each claim takes many rows.
MIN_PREFETCH = 16
#: With nothing due and no NOTIFY, look again after this long anyway.
POLL_INTERVAL = 5.0
#: A short claim whose next row is already due (another daemon holds it) looks again after this long.
MIN_CLAIM_WAIT = 0.05
#: Bytes of an answer's body read (for the error excerpt); the rest is not waited for.
ANSWER_READ_LIMIT = 4096
#: How long outcomes still unrecorded at cancellation may take to record.
FINAL_RECORD_TIMEOUT = 5.0
#: Backoff of PostgreSQL failures while claiming or recording (doubling, no jitter).
DB_RETRY_BASE, DB_RETRY_CAP = 0.2, 10.0

USER_AGENT = f"inboundd/{__version__}"


class _Item(NamedTuple):
    row: outbox.Claimed
    #: The request body; None when it cannot be made (the reason in *problem*).
    body: bytes | None
    problem: str | None = None


class _Batch(NamedTuple):
    items: list[_Item]
    #: Seconds until the next row is due, when the claim took fewer rows than asked (None: no row pending).
    next_due: float | None


class TargetWorker:
    """Sends one HTTP target's outbox rows (see the module docstring)."""

    def __init__(self, target: Target, db: Database, instance: str) -> None:
        self.target = target
        self.cfg = target.cfg
        self.db = db
        self.instance = instance
        self.gate = Gate(self.cfg.backoff_base, self.cfg.backoff_cap)
        self.in_flight = 0
        self.delivered = 0
        self.failed = 0
        #: Claim rounds that reached PostgreSQL (tests wait on it instead of guessing when a round ran).
        self.claim_rounds = 0
        self._draining = False
        self._changed = trio.Event()
        self._results: list[outbox.Result] = []
        self._results_ready = trio.Event()
        self._recording = False
        self._releasing = False
        self._idle = trio.Event()
        self._idle.set()
        #: Seconds of the outage a delivery just ended, until the recorder made its failures due again.
        self._reopen: float | None = None
        #: One client (one keep-alive connection) per request slot, free ones in the channel: a pool of many
        #: connections checks every idle one for readability on each request (a syscall each), which made more
        #: concurrency slower; one connection per client checks one.
        self._clients_free, self._clients = trio.open_memory_channel[httpx.AsyncClient](math.inf)
        #: Claimed rows waiting for a free request slot, oldest first (at most ``_prefetch``).
        self._ready: deque[_Item] = deque()
        self._prefetch = max(self.cfg.concurrency, MIN_PREFETCH)
        # A claimed row may wait behind a full buffer of slow requests before its own.
        self._lease = self.cfg.timeout * (1 + math.ceil(self._prefetch / self.cfg.concurrency)) + LEASE_MARGIN

    # ------------------------------------------------------------------ control

    def wake(self) -> None:
        """Look for due rows now (a NOTIFY for this target, a redelivery, a request that ended)."""
        self._changed.set()

    def drain(self) -> None:
        """Stop claiming; requests in flight finish and are recorded."""
        self._draining = True
        self.wake()

    def resume(self) -> None:
        self._draining = False
        self.wake()

    async def wait_idle(self) -> None:
        """Return once no request is in flight and no outcome waits to be recorded."""
        while not self._is_idle():
            self._idle = trio.Event()
            await self._idle.wait()

    def _is_idle(self) -> bool:
        return (self.in_flight == 0 and not self._ready and not self._results and not self._recording
                and not self._releasing)

    def _check_idle(self) -> None:
        if self._is_idle():
            self._idle.set()

    def status(self, now: float) -> dict[str, Any]:
        state = "draining" if self._draining else self.gate.state(now)
        return {
            "target": self.cfg.id, "kind": self.cfg.kind, "state": state, "in_flight": self.in_flight,
            "delivered": self.delivered, "failed": self.failed,
            "paused_for": round(self.gate.wait(now), 3), "last_error": self.gate.last_error,
        }

    # ------------------------------------------------------------------ tasks

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Claim, send and record until cancelled; reports started at once. See the module docstring."""
        context = ssl_context(self.cfg.ca_file)
        timeout = httpx.Timeout(self.cfg.timeout)
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with AsyncExitStack() as clients:
            for _ in range(self.cfg.concurrency):
                self._clients_free.send_nowait(await clients.enter_async_context(httpx.AsyncClient(
                    verify=context, timeout=timeout, limits=limits, follow_redirects=False)))
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._record_loop)
                    task_status.started()
                    await self._claim_loop(nursery)
            finally:
                with trio.CancelScope(shield=True):
                    await self._final_record()

    async def _claim_loop(self, nursery: trio.Nursery) -> None:
        db_retry = Backoff(DB_RETRY_BASE, DB_RETRY_CAP, jitter="none")
        while True:
            changed = self._changed = trio.Event()  # before looking: a wake-up meanwhile is not lost
            now = trio.current_time()
            state = self.gate.state(now)
            if self._draining or state == "paused":
                if self._ready:
                    await self._release_ready()
                    continue
                with trio.move_on_after(self.gate.wait(now) if state == "paused" else math.inf):
                    await changed.wait()
                continue
            if self._reopen is not None:  # older rows become due first
                await changed.wait()
                continue
            self._dispatch(nursery)
            if state == "probing":
                limit = 0 if self.in_flight or self._ready else 1
            else:
                limit = self._prefetch - len(self._ready) if len(self._ready) <= self._prefetch // 2 else 0
            if limit <= 0:
                await changed.wait()
                continue
            try:
                batch = await self.db.run(self._claim, limit, state == "probing")
            except Exception as exc:  # PostgreSQL unavailable: the rows wait in the outbox
                delay = db_retry.failed()
                log.event(_log, "delivery.claim_failed", level=logging.WARNING, target=self.cfg.id,
                          error=f"{type(exc).__name__}: {exc}", retry_in=delay)
                await trio.sleep(delay)
                continue
            db_retry.reset()
            self.claim_rounds += 1
            self._ready.extend(batch.items)
            self._dispatch(nursery)  # the gate as it is now: a request may have failed meanwhile
            if len(batch.items) < limit:  # nothing more is due: wait (a request ending wakes the dispatch)
                wait = POLL_INTERVAL if batch.next_due is None else min(POLL_INTERVAL, batch.next_due)
                with trio.move_on_after(max(wait, MIN_CLAIM_WAIT)):
                    await changed.wait()

    def _dispatch(self, nursery: trio.Nursery) -> None:
        """Start a send task for each ready row the gate's free request slots allow, oldest first."""
        if self._draining or self._reopen is not None:
            return
        allowance = self.gate.allowance(trio.current_time(), self.cfg.concurrency)
        while self._ready and self.in_flight < allowance:
            self.in_flight += 1
            nursery.start_soon(self._send, self._ready.popleft())

    async def _release_ready(self) -> None:
        """Hand back the claimed rows not sent (paused or draining): due again, their attempt not counted."""
        items = list(self._ready)
        self._ready.clear()
        rows = [(item.row.id, item.row.lease_owner) for item in items]
        self._releasing = True
        try:
            await self.db.run(outbox.release, rows)
        except Exception as exc:  # noqa: BLE001 - their leases run out by themselves
            log.event(_log, "delivery.release_failed", level=logging.WARNING, target=self.cfg.id, rows=len(rows),
                      error=f"{type(exc).__name__}: {exc}")
        finally:
            self._releasing = False
        self._check_idle()

    def _claim(self, conn: Any, limit: int, probing: bool) -> _Batch:
        """Lease rows and make their bodies (in the database thread: JSON and base64 stay off the event loop)."""
        cfg = self.cfg
        owner = f"{self.instance}:{secrets.token_hex(4)}"
        rows = outbox.claim(conn, cfg.id, owner, limit=limit, lease=self._lease,
                            probe_statuses=UNAVAILABLE_STATUSES if probing else None,
                            with_raw=cfg.kind == "action_mailbox")
        items: list[_Item] = []
        if cfg.kind == "webhook" and rows:
            ids = [row.message_row_id for row in rows]
            found = messages.messages_by_id(conn, ids)
            attachments = messages.attachments_by_message(conn, ids, inline_max=cfg.inline_max)
            for row in rows:
                items.append(_Item(row, webhook_body(found[row.message_row_id], attachments.get(row.message_row_id, []))))
        else:
            for row in rows:
                problem = None if row.raw is not None else (
                    "the raw message is not stored (queued for another kind of target, and store.keep_raw is off)")
                items.append(_Item(row, row.raw, problem))
        next_due = outbox.next_due(conn, cfg.id) if len(rows) < limit else 0.0
        return _Batch(items, next_due)

    def _request(self, item: _Item) -> HttpRequest:
        row = item.row
        assert item.body is not None
        if self.cfg.kind == "webhook":
            return webhook_request(self.cfg.url, self.target.key, row.delivery_id, int(clock.wall()), item.body,
                                   USER_AGENT)
        return action_mailbox_request(self.cfg.url, self.target.password, item.body, row.delivery_id, USER_AGENT)

    async def _attempt(self, item: _Item) -> Verdict:
        if item.body is None:
            return Verdict("dead", None, item.problem)
        request = self._request(item)
        client = self._clients.receive_nowait()  # in flight ≤ concurrency: one is free
        started = trio.current_time()
        try:
            with trio.move_on_after(self.cfg.timeout) as deadline:
                response = await client.send(
                    client.build_request(request.method, request.url, headers=list(request.headers),
                                         content=request.body),
                    stream=True,
                )
                try:
                    answer = b""
                    async for chunk in response.aiter_raw():
                        answer += chunk
                        if len(answer) >= ANSWER_READ_LIMIT:
                            break
                finally:
                    await response.aclose()
                return judge_response(response.status_code, response.headers, answer, clock.wall())
            assert deadline.cancelled_caught
            return judge_failure("timeout", f"{self.cfg.timeout:g}s")
        except httpx.TimeoutException as exc:
            return judge_failure("timeout", str(exc) or type(exc).__name__)
        except httpx.ConnectError as exc:
            return judge_failure("connect", str(exc) or type(exc).__name__)
        except (httpx.HTTPError, OSError) as exc:
            return judge_failure("transport", f"{type(exc).__name__}: {exc}")
        finally:
            self._clients_free.send_nowait(client)
            metrics.delivery_seconds.labels(self.cfg.id).observe(trio.current_time() - started)

    async def _send(self, item: _Item) -> None:
        row = item.row
        try:
            verdict = await self._attempt(item)
        finally:
            self.in_flight -= 1
            self.wake()
            self._check_idle()  # a cancelled request leaves no outcome
        cfg = self.cfg
        step = next_step(verdict, row.attempts, max_attempts=cfg.max_attempts, base=cfg.backoff_base,
                         cap=cfg.backoff_cap)
        now = trio.current_time()
        fields = {"target": cfg.id, "delivery_id": row.delivery_id, "message_row_id": row.message_row_id,
                  "attempt": row.attempts, "http_status": verdict.http_status}
        if step.outcome == "delivered":
            self.delivered += 1
            metrics.deliveries_delivered.labels(cfg.id).inc()
            outage = self.gate.delivered(now)
            if outage is not None:
                self._reopen = max(self._reopen or 0.0, outage)
                log.event(_log, "delivery.target_back", target=cfg.id, outage=round(outage, 3))
            log.event(_log, "delivery.delivered", **fields)
        else:
            self.failed += 1
            metrics.deliveries_failed.labels(cfg.id, step.outcome).inc()
            pause = self.gate.unavailable(now, verdict.retry_after, verdict.error) if verdict.unavailable \
                else self.gate.failed(now, verdict.error)
            log.event(_log, f"delivery.{step.outcome}", level=logging.WARNING, **fields, error=step.error,
                      retry_in=round(step.delay, 3) if step.outcome == "retry" else None)
            if pause is not None and self.gate.failures and pause > 0:
                metrics.delivery_pauses.labels(cfg.id).inc()
                log.event(_log, "delivery.target_paused", level=logging.WARNING, target=cfg.id,
                          pause=round(pause, 3), failures=self.gate.failures, error=verdict.error)
        self._results.append(outbox.Result(row.id, row.lease_owner, step.outcome, step.delay, verdict.http_status,
                                           step.error))
        self._results_ready.set()

    async def _record_loop(self) -> None:
        while True:
            await self._results_ready.wait()
            self._results_ready = trio.Event()
            await self._record_pending()
            self._check_idle()

    async def _record_pending(self) -> None:
        batch, self._results = self._results, []
        reopen = self._reopen
        self._recording = True
        db_retry = Backoff(DB_RETRY_BASE, DB_RETRY_CAP, jitter="none")
        try:
            while True:
                try:
                    reopened = await self.db.run(self._record, batch, reopen)
                    break
                except Exception as exc:  # PostgreSQL unavailable: keep the outcomes and try again
                    delay = db_retry.failed()
                    log.event(_log, "delivery.record_failed", level=logging.WARNING, target=self.cfg.id,
                              outcomes=len(batch), error=f"{type(exc).__name__}: {exc}", retry_in=delay)
                    await trio.sleep(delay)
        except BaseException:
            self._results[:0] = batch  # cancelled: the final record takes them
            raise
        finally:
            self._recording = False
        if reopen is not None:
            if self._reopen == reopen:
                self._reopen = None
            log.event(_log, "delivery.reopened", target=self.cfg.id, rows=reopened)
            self.wake()

    def _record(self, conn: Any, batch: list[outbox.Result], reopen: float | None) -> int:
        outbox.record(conn, batch)
        if reopen is None:
            return 0
        window = reopen + self._lease  # a failure is recorded up to a lease after its claim
        return outbox.reopen_failed_since(conn, self.cfg.id, window, UNAVAILABLE_STATUSES)

    async def _final_record(self) -> None:
        """Record the outcomes already answered and hand back the rows not sent (shielded by the caller, bounded)."""
        batch, self._results = self._results, []
        unsent = [(item.row.id, item.row.lease_owner) for item in self._ready]
        self._ready.clear()
        if not batch and not unsent:
            return

        def finish(conn: Any) -> None:
            outbox.record(conn, batch)
            outbox.release(conn, unsent)

        with trio.move_on_after(FINAL_RECORD_TIMEOUT):
            try:
                await self.db.run(finish)
            except Exception as exc:  # noqa: BLE001 - the leases end and the rows are sent again
                log.event(_log, "delivery.record_failed", level=logging.WARNING, target=self.cfg.id,
                          outcomes=len(batch), error=f"{type(exc).__name__}: {exc}", note="sent again later")
