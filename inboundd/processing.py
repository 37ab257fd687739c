"""One job, start to end: ledger claim → fetch → parse → store (one transaction) → after-commit.

``await Processor(db, sources, cfg, instance).handle(job)`` returns an
:class:`~inboundd.outcomes.Outcome` (the consumer acks) or raises (the
consumer retries or dead-letters; see ``outcomes.py``):

1. **Claim** the ledger row of the job's identity in a short transaction of
   its own (``store/ledger.py``). A terminal row → ``duplicate`` outcome,
   nothing else happens. A live claim of another holder: if it is the same
   job (the queue re-delivered it because the first consumer looks dead) →
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

On any failure after the claim the ledger row becomes ``failed`` with
``last_error`` (short separate transaction, best effort; if even that fails
the lease runs out) and the exception goes on; PostgreSQL connection and
server failures become :class:`TransientError`. A process killed between
claim and commit leaves ``processing`` with a lease: the retry takes over
once it expired and stores the message — never a ``duplicate``.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, NamedTuple

import psycopg
import trio

from . import log, metrics
from .config_schema import CoreConfig
from .deliver.python import Inbound, run_handlers
from .deliver.targets import NOTHING, Plan, Router
from .jobs import Job
from .mime import Message
from .outcomes import Outcome, PermanentError, TransientError
from .parsing import Parser, ThreadParser
from .source import FetchedMessage, IngestingSource, Source, SourceRegistry, SourceUnavailable
from .store import ledger, messages, outbox
from .store.db import Database

__all__ = ["Processor", "StoreResult", "commit_message", "is_transient_db_error"]

_log = log.get_logger("processing")

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

    def _owner(self) -> str:
        return f"{self.instance}:{secrets.token_hex(6)}"

    async def handle(self, job: Job) -> Outcome:
        """Process *job* once; see the module docstring for outcomes and exceptions.

        Cancellation: honored everywhere; a job cancelled after its claim is
        recorded as ``failed`` (shielded, bounded) so the retry need not wait
        for the lease. A cancel racing the claim's own commit can leave the row
        ``processing`` until ``processing.lease`` ends; the retry then takes over.
        """
        if not job.pointer.names_message:
            return await self._ingest(job)
        cfg = self.cfg
        key = ledger.Key(job.tenant, job.account, job.identity())
        owner = self._owner()
        try:
            claim = await self.db.run(
                lambda conn: ledger.claim(conn, key, provider=job.provider, job_id=job.id, owner=owner,
                                          lease=cfg.processing.lease)
            )
        except psycopg.Error as exc:
            if is_transient_db_error(exc):
                raise TransientError(f"ledger claim failed: {exc}") from exc
            raise
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

        log.event(_log, "job.claim", level=logging.DEBUG, **job.log_fields(), identity=key.identity,
                  ledger_attempt=row.attempts, owner=owner)
        try:
            outcome = await self._process(job, key, owner, cfg)
        except _Skip as skip:
            await self._finish_skip(key, owner, skip)
            metrics.jobs_skipped.labels(job.provider, job.account, skip.reason).inc()
            return self._report(job, row.attempts, Outcome("skipped", skip.reason),
                                identity=key.identity, detail=skip.detail)
        except BaseException as exc:
            await self._record_failure(job, key, owner, exc, row.attempts)
            if isinstance(exc, psycopg.Error) and is_transient_db_error(exc):
                raise TransientError(f"PostgreSQL failed while storing: {exc}") from exc
            raise
        return self._report(job, row.attempts, outcome, identity=key.identity)

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

    async def _process(self, job: Job, key: ledger.Key, owner: str, cfg: CoreConfig) -> Outcome:
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
            lambda conn: commit_message(conn, key, owner, job, fetched, message,
                                        dedupe_message_id=dedupe, keep_raw=keep_raw, plan=plan)
        )
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

    async def _finish_skip(self, key: ledger.Key, owner: str, skip: _Skip) -> None:
        try:
            await self.db.run(lambda conn: ledger.finish(conn, key, owner, "skipped", reason=skip.reason))
        except psycopg.Error as exc:
            if is_transient_db_error(exc):
                raise TransientError(f"could not record skip: {exc}") from exc
            raise

    async def _record_failure(self, job: Job, key: ledger.Key, owner: str, exc: BaseException, attempts: int) -> None:
        error = "cancelled" if isinstance(exc, trio.Cancelled) else f"{type(exc).__name__}: {exc}"
        reason = exc.reason if isinstance(exc, PermanentError) else None
        recorded = False
        with trio.move_on_after(FAIL_RECORD_TIMEOUT) as scope:
            scope.shield = True
            try:
                recorded = await self.db.run(lambda conn: ledger.fail(conn, key, owner, error, reason=reason))
            except Exception as db_exc:  # noqa: BLE001 - best effort: the lease expires by itself
                log.event(_log, "ledger.fail_not_recorded", level=logging.WARNING, **job.log_fields(),
                          error=f"{type(db_exc).__name__}: {db_exc}")
        metrics.ledger_outcomes.labels(job.provider, job.account, "failed", reason or type(exc).__name__).inc()
        log.event(_log, "job.failed", level=logging.WARNING, **job.log_fields(), identity=key.identity,
                  ledger_attempt=attempts, recorded=recorded, error=error)

    def _report(self, job: Job, attempts: int, outcome: Outcome, **fields: Any) -> Outcome:
        metrics.ledger_outcomes.labels(job.provider, job.account, outcome.status, outcome.reason or "").inc()
        log.event(_log, f"job.{outcome.status}", **job.log_fields(), ledger_attempt=attempts,
                  reason=outcome.reason, message_row_id=outcome.message_row_id, **fields)
        return outcome
