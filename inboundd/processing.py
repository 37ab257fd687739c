"""One job, start to end: ledger claim → fetch → parse → store (one transaction) → after-commit.

``await Processor(db, sources, cfg, instance).handle(job)`` returns an
:class:`~inboundd.outcomes.Outcome` (the consumer acks) or raises (the
consumer retries or dead-letters; see ``outcomes.py``):

1. **Claim** the ledger row of the job's identity in a short transaction of
   its own (``store/ledger.py``), under a fresh token of this daemon
   (``claims.py``). A terminal row → ``duplicate`` outcome, nothing else
   happens. A row held by a token of this daemon instance that no live task
   holds (an earlier life of the process, or a task that ended without
   recording its failure) is taken over at once, fenced on that token. A
   live claim of another holder: if it is the same job (the queue
   re-delivered it because the first consumer looks dead) →
   :class:`TransientError` with ``retry_after`` = the lease left, so the
   message is stored by whoever outlives the lease; if it is another job
   for the same identity (two pointers at one message), that job is still
   in the queue and will finish or be retried → this one is a ``duplicate``
   (reason ``in_flight``) without effect.
2. **Fetch** through ``sources.get(job.provider)`` within
   ``processing.fetch_timeout``. :class:`SourceUnavailable`, or more bytes
   than ``processing.max_message_size`` → ledger ``skipped`` with the reason.
3. **Parse** with :func:`inboundd.mime.parse_message` (never raises) through
   the processor's :mod:`~inboundd.parsing` parser: worker processes in the
   daemon, a worker thread otherwise.
4. **Store**, one transaction: lock the ledger row and check the claim is
   still ours (fencing); Message-ID dedupe within the account under an
   advisory lock (``processing.dedupe_message_id``); insert message +
   attachments; an outbox row per matching ``[[deliver]]`` target and the
   matching Python handlers (``inboundd/deliver/``); ledger → ``processed``;
   ``NOTIFY inbound_message, '<id>'``.
5. **After commit**: ``source.after_commit(job, outcome)``, best effort.

A job that names no message (``job.pointer.names_message`` false: a Gmail
push, walked into one job per message) skips all of that: its source's
``ingest`` does the work and says what to acknowledge (``IngestingSource``).

While the job runs, its claim's lease (``processing.lease``) is renewed by
:class:`~inboundd.claims.Claims`; if it cannot be confirmed for a lease, the
work is cancelled and the job retried (:class:`TransientError`). Every
database call is bounded by half the lease (``statement_timeout``,
``lock_timeout`` and a wait here), so a wedged statement ends before a dead
holder's lease does.

On any failure after the claim the ledger row becomes ``failed`` with
``last_error`` (short separate transaction, best effort) and the exception
goes on. PostgreSQL not answering at all becomes
:class:`~inboundd.outcomes.DependencyDown` (the consumer keeps the job and
runs it again once the server answers; the row left ``processing`` is then
taken over at once, see 1.); other transient server errors (a lock timeout,
a serialization failure) become :class:`TransientError`. A process killed
between claim and commit leaves ``processing`` under its token: the next
life of the daemon takes it back at start, another daemon takes it over
once the lease expired — never a ``duplicate``.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import psycopg
import trio

from . import log, metrics
from .availability import Availability
from .claims import Claims, Held
from .config_schema import CoreConfig
from .deliver.python import Inbound, run_handlers
from .deliver.targets import NOTHING, Plan, Router
from .jobs import Job
from .mime import Message
from .outcomes import DependencyDown, Outcome, PermanentError, TransientError
from .parsing import Parser, ThreadParser
from .source import FetchedMessage, IngestingSource, Source, SourceRegistry, SourceUnavailable
from .store import ledger, messages, outbox
from .store.db import Database, DatabaseTimeout

__all__ = ["Processor", "StoreResult", "commit_message", "is_transient_db_error", "is_unreachable"]

_log = log.get_logger("processing")

#: How long the ping that tells a slow call from an unreachable server may take.
SLOW_CALL_PING_TIMEOUT = 2.0
#: Bounded time for the ledger write that records a failure (it runs shielded on cancel).
FAIL_RECORD_TIMEOUT = 5.0


#: SQLSTATE prefixes worth a retry without burning an attempt: connection exception (08),
#: insufficient resources (53: disk full, too many connections), operator intervention
#: (57P: shutdown, restarting), transaction rollback (40: serialization failure, deadlock),
#: lock not available (55P03). Everything else, e.g. program limit exceeded (54: an index
#: entry too large), is a job error that ends in the DLQ instead of looping.
TRANSIENT_SQLSTATES = ("08", "53", "57P", "40", "55P03")


def is_transient_db_error(exc: BaseException) -> bool:
    """True for PostgreSQL unreachable, restarting, out of resources, or a serialization/deadlock abort (pure)."""
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:  # no server answer: connection lost or refused, pool timeout
        return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
    return state.startswith(TRANSIENT_SQLSTATES)


#: SQLSTATEs meaning the server is going away or not there: connection exception (08), admin or crash
#: shutdown, cannot connect now (57P01-57P03).
UNREACHABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")


def is_unreachable(exc: BaseException) -> bool:
    """True when PostgreSQL did not answer at all, or is shutting down (pure): no job can succeed now.

    No server answer (connection lost or refused, no pooled connection
    within ``connect_timeout``, a call past its timeout), a connection
    exception, or the server shutting down or starting up.
    """
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:
        return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
    return state.startswith(UNREACHABLE_SQLSTATES)


class StoreResult(NamedTuple):
    """What the store transaction did: ``stored``, ``duplicate`` (Message-ID) or ``lost`` (claim taken over)."""

    kind: str
    message_row_id: int | None = None
    row: ledger.LedgerRow | None = None


def commit_message(
    conn: Any, key: ledger.Key, owner: str, job: Job, fetched: FetchedMessage, message: Message,
    *, dedupe_message_id: bool, keep_raw: bool, plan: Plan = NOTHING,
) -> StoreResult:
    """The store transaction (run through ``db.run``): fence, dedupe, insert, deliveries, finish, notify.

    Lock order is ledger row, then Message-ID advisory lock, everywhere.
    *plan* names the outbox rows owed and the Python handlers to run
    (a handler that raises rolls the whole transaction back).
    """
    row = ledger.hold(conn, key, owner)
    if row is None or row.status != "processing" or row.lease_owner != owner:
        return StoreResult("lost", row.message_id if row else None, row)
    if dedupe_message_id and message.message_id:
        messages.lock_message_id(conn, job.tenant, job.account, message.message_id)
        original = messages.find_by_message_id(conn, job.tenant, job.account, message.message_id)
        if original is not None:
            ledger.finish(conn, key, owner, "duplicate", reason="message_id", message_id=original)
            return StoreResult("duplicate", original)
    message_row_id = messages.insert_message(conn, job, fetched, message, keep_raw=keep_raw)
    outbox.insert(conn, plan.rows(message_row_id, fetched.raw, keep_raw=keep_raw))
    if plan.handlers:
        run_handlers(conn, plan.handlers, Inbound(
            message_row_id=message_row_id, tenant=job.tenant, account=job.account, provider=job.provider,
            identity=job.identity(), provider_message_id=fetched.provider_message_id, folder=fetched.folder,
            message=message, raw=fetched.raw))
    ledger.finish(conn, key, owner, "processed", message_id=message_row_id)
    messages.notify(conn, message_row_id)
    return StoreResult("stored", message_row_id)


class _Skip(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


class Processor:
    """Turns one pointer job into a stored message (or a recorded reason why not).

    ``cfg`` is read once per job, at its start. The sections it reads
    (``processing``, ``store``) change only with a restart: a reload keeps
    them as they run (``daemon.RESTART_SECTIONS``).
    """

    def __init__(
        self, db: Database, sources: SourceRegistry, cfg: CoreConfig, instance: str,
        *, parser: Parser | None = None, router: Router | None = None,
    ) -> None:
        self.db = db
        #: Which ``[[deliver]]`` targets each stored message is owed to (swapped on reload).
        self.router = router or Router()
        self.sources = sources
        self.cfg = cfg
        self.instance = instance or "inboundd"
        # The daemon parses in worker processes (parsing.ProcessParser); without one, in two threads.
        self.parser: Parser = parser or ThreadParser(2)
        #: This daemon's claim tokens and their leases; run ``claims.run`` beside the consumers.
        self.claims = Claims(db, self.instance, cfg.processing.lease)
        #: Whether PostgreSQL answers; consumers wait on it when a job raised DependencyDown.
        self.postgres = Availability(db.outage, lambda: db.check(self._db_timeout(self.cfg)))

    @staticmethod
    def _db_timeout(cfg: CoreConfig) -> float:
        """The bound of every database call of a job: half the lease, so it ends before a dead holder's lease."""
        return cfg.processing.lease / 2

    async def handle(self, job: Job) -> Outcome:
        """Process *job* once; see the module docstring for outcomes and exceptions.

        Cancellation: honored everywhere; a job cancelled after its claim is
        recorded as ``failed`` (shielded, bounded) so the retry need not wait
        for the lease. A cancel racing the claim's own commit can leave the row
        ``processing`` under a token no task holds: the next claim of this
        daemon takes it over at once, another daemon's after the lease.
        """
        if not job.pointer.names_message:
            return await self._ingest(job)
        cfg = self.cfg
        key = ledger.Key(job.tenant, job.account, job.identity())
        if self.postgres.down:
            raise self._unreachable("ledger claim skipped: PostgreSQL is not answering")
        owner = self.claims.new_token()
        with self.claims.hold(owner) as held:
            sent_at = trio.current_time()
            claim = await self._claim(job, key, owner, cfg)
            if claim.verdict == "busy" and self.claims.is_dead(claim.row.lease_owner):
                dead = claim.row.lease_owner
                sent_at = trio.current_time()
                claim = await self._claim(job, key, owner, cfg, dead_holder=dead)
                if claim.verdict == "claimed":
                    metrics.ledger_takeovers.labels("holder_gone").inc()
                    log.event(_log, "ledger.take_over", level=logging.WARNING, reason="holder_gone",
                              **job.log_fields(), identity=key.identity, holder=dead,
                              ledger_attempt=claim.row.attempts)
            row = claim.row
            if claim.verdict == "terminal":
                return self._report(job, row.attempts, Outcome("duplicate", f"ledger_{row.status}", row.message_id),
                                    identity=key.identity)
            if claim.verdict == "busy":
                if row.job_id == job.id:
                    log.event(_log, "job.busy", **job.log_fields(), identity=key.identity, holder=row.lease_owner,
                              lease_remaining=round(claim.lease_remaining, 3))
                    raise TransientError(
                        f"{key.identity} is being processed by {row.lease_owner} (lease ends in"
                        f" {claim.lease_remaining:.1f}s)", retry_after=max(1.0, claim.lease_remaining),
                    )
                return self._report(job, row.attempts, Outcome("duplicate", "in_flight", None),
                                    identity=key.identity, holder_job=row.job_id)

            held.claimed(sent_at)
            log.event(_log, "job.claim", level=logging.DEBUG, **job.log_fields(), identity=key.identity,
                      ledger_attempt=row.attempts, owner=owner)
            with held.scope:
                try:
                    outcome = await self._process(job, key, held, cfg)
                except _Skip as skip:
                    await self._finish_skip(key, owner, skip, cfg)
                    held.released()
                    metrics.jobs_skipped.labels(job.provider, job.account, skip.reason).inc()
                    return self._report(job, row.attempts, Outcome("skipped", skip.reason),
                                        identity=key.identity, detail=skip.detail)
                except BaseException as exc:
                    failure = await self._db_failure("PostgreSQL failed while storing", exc)
                    await self._record_failure(job, key, held, exc, row.attempts, cfg)
                    if failure is not exc:
                        raise failure from exc
                    raise
                return self._report(job, row.attempts, outcome, identity=key.identity)
            # Only the keeper cancels held.scope: the lease could not be confirmed in time.
            raise TransientError(f"{key.identity}: ledger claim given up ({held.lost})")

    async def _claim(self, job: Job, key: ledger.Key, owner: str, cfg: CoreConfig,
                     dead_holder: str | None = None) -> ledger.Claim:
        try:
            return await self.db.run(
                lambda conn: ledger.claim(conn, key, provider=job.provider, job_id=job.id, owner=owner,
                                          lease=cfg.processing.lease, dead_holder=dead_holder),
                timeout=self._db_timeout(cfg),
            )
        except psycopg.Error as exc:
            raise await self._db_failure("ledger claim failed", exc) from exc

    async def _db_failure(self, what: str, exc: BaseException) -> BaseException:
        """What a database error *exc* becomes: DependencyDown, TransientError, a job error, or itself.

        A call that ran past its timeout (:class:`DatabaseTimeout`) may be
        PostgreSQL not answering, or the call's own slow Python (a deliver
        handler runs inside the store transaction): a quick ping tells them
        apart. Awaits only for such a timeout.
        """
        if isinstance(exc, DatabaseTimeout):
            try:
                await self.db.ping(timeout=SLOW_CALL_PING_TIMEOUT)
            except psycopg.Error:
                pass  # not answering: an outage
            else:
                return RuntimeError(f"{what}: the call ran longer than its {self._db_timeout(self.cfg):g}s bound "
                                    "while PostgreSQL answered (a slow deliver handler?)")
        if is_unreachable(exc):
            return self._unreachable(f"{what}: {exc}", exc)
        if isinstance(exc, psycopg.Error) and is_transient_db_error(exc):
            return TransientError(f"{what}: {exc}")
        return exc

    def _unreachable(self, message: str, exc: BaseException | None = None) -> DependencyDown:
        if exc is not None:
            self.postgres.report_down(exc)
        return DependencyDown(message, dependency="postgres", wait_up=self.postgres.wait_up)

    async def _ingest(self, job: Job) -> Outcome:
        """Ingress work queued for consume time (a Gmail history walk): the source does it, no ledger row."""
        try:
            source = self.sources.get(job.provider)
        except LookupError as exc:
            raise PermanentError("no_source", str(exc)) from None
        if not isinstance(source, IngestingSource):
            raise PermanentError("not_a_message", f"{job.provider} jobs must point at a message")
        outcome = await source.ingest(job)
        log.event(_log, "job.ingested", level=logging.DEBUG, **job.log_fields(), identity=job.identity(),
                  status=outcome.status, reason=outcome.reason)
        return outcome

    async def _process(self, job: Job, key: ledger.Key, held: Held, cfg: CoreConfig) -> Outcome:
        try:
            source = self.sources.get(job.provider)
        except LookupError as exc:
            raise PermanentError("no_source", str(exc)) from None
        max_size = cfg.processing.max_message_size
        try:
            with trio.fail_after(cfg.processing.fetch_timeout):
                fetched = await source.fetch(job, max_size)
        except trio.TooSlowError:
            # A job error (counts an attempt): a message that never downloads ends in the DLQ.
            raise RuntimeError(f"fetch timed out after {cfg.processing.fetch_timeout:g}s") from None
        if isinstance(fetched, SourceUnavailable):
            raise _Skip(fetched.reason, fetched.detail)
        if len(fetched.raw) > max_size:
            raise _Skip("oversize", f"{len(fetched.raw)} bytes received, max_message_size is {max_size}")

        message = await self.parser.parse(fetched.raw)
        dedupe, keep_raw = cfg.processing.dedupe_message_id, cfg.store.keep_raw
        plan = self.router.plan(job.tenant, job.account)
        result = await self.db.run(
            lambda conn: commit_message(conn, key, held.token, job, fetched, message,
                                        dedupe_message_id=dedupe, keep_raw=keep_raw, plan=plan),
            timeout=self._db_timeout(cfg),
        )
        held.released()
        if result.kind == "lost":
            current = result.row
            if current is not None and current.status in ledger.TERMINAL:
                return Outcome("duplicate", f"ledger_{current.status}", current.message_id)
            # Someone took the claim over after our lease ran out and has not finished: retry later
            # rather than ack, so the message cannot fall between two holders.
            raise TransientError(f"{key.identity}: lease lost to {current.lease_owner if current else None}")
        if result.kind == "duplicate":
            # No post-action: a sender may reuse a Message-ID for a different email, and
            # deleting or moving a message that was not stored itself could lose it.
            return Outcome("duplicate", "message_id", result.message_row_id)
        for target, _ in plan.handlers:
            metrics.deliveries_delivered.labels(target).inc()
        outcome = Outcome("processed", None, result.message_row_id)
        await self._after_commit(source, job, outcome, cfg)
        return outcome

    async def _after_commit(self, source: Source, job: Job, outcome: Outcome, cfg: CoreConfig) -> None:
        try:
            with trio.move_on_after(cfg.processing.fetch_timeout):
                await source.after_commit(job, outcome)
        except Exception as exc:  # noqa: BLE001 - the message is committed; post-actions are best effort
            log.event(_log, "job.after_commit_failed", level=logging.WARNING, **job.log_fields(),
                      error=f"{type(exc).__name__}: {exc}")

    async def _finish_skip(self, key: ledger.Key, owner: str, skip: _Skip, cfg: CoreConfig) -> None:
        try:
            await self.db.run(lambda conn: ledger.finish(conn, key, owner, "skipped", reason=skip.reason),
                              timeout=self._db_timeout(cfg))
        except psycopg.Error as exc:
            raise await self._db_failure("could not record skip", exc) from exc

    async def _record_failure(self, job: Job, key: ledger.Key, held: Held, exc: BaseException, attempts: int,
                              cfg: CoreConfig) -> None:
        if isinstance(exc, trio.Cancelled):
            error = f"ledger lease lost: {held.lost}" if held.lost else "cancelled"
        else:
            error = f"{type(exc).__name__}: {exc}"
        reason = exc.reason if isinstance(exc, PermanentError) else None
        recorded = False
        if self.postgres.down:
            # Pointless to wait for: the retry of this daemon takes the row over at once (holder_gone).
            log.event(_log, "ledger.fail_not_recorded", level=logging.WARNING, **job.log_fields(),
                      error="PostgreSQL is not answering")
        else:
            with trio.move_on_after(FAIL_RECORD_TIMEOUT) as scope:
                scope.shield = True
                try:
                    recorded = await self.db.run(
                        lambda conn: ledger.fail(conn, key, held.token, error, reason=reason),
                        timeout=min(FAIL_RECORD_TIMEOUT, self._db_timeout(cfg)))
                except Exception as db_exc:  # noqa: BLE001 - best effort: the row is taken over anyway
                    log.event(_log, "ledger.fail_not_recorded", level=logging.WARNING, **job.log_fields(),
                              error=f"{type(db_exc).__name__}: {db_exc}")
        if recorded:
            held.released()
        metrics.ledger_outcomes.labels(job.provider, job.account, "failed", reason or type(exc).__name__).inc()
        log.event(_log, "job.failed", level=logging.WARNING, **job.log_fields(), identity=key.identity,
                  ledger_attempt=attempts, recorded=recorded, error=error)

    def _report(self, job: Job, attempts: int, outcome: Outcome, **fields: Any) -> Outcome:
        metrics.ledger_outcomes.labels(job.provider, job.account, outcome.status, outcome.reason or "").inc()
        log.event(_log, f"job.{outcome.status}", **job.log_fields(), ledger_attempt=attempts,
                  reason=outcome.reason, message_row_id=outcome.message_row_id, **fields)
        return outcome
