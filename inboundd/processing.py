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

**Batches** (:meth:`Processor.handle_batch`, what the consumer pool uses
for a claimed batch): the same steps and the same outcome per job, with
one claim transaction for the batch (rows in key order), one fetch per
source (``fetch_many``: IMAP asks each folder once), the parses in
parallel, and one store transaction (:func:`commit_batch`: the ledger rows
locked in key order, then the Message-ID locks in lock-key order; fencing
per row). If the store transaction fails, its messages are stored one by
one, so a poison message fails alone.

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
from contextlib import ExitStack
from typing import Any, NamedTuple, Sequence

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

__all__ = ["Processor", "StoreItem", "StoreResult", "commit_batch", "commit_message", "fetch_all",
           "is_transient_db_error", "is_unreachable"]

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
    _run_handlers(conn, plan, message_row_id, job, fetched, message)
    ledger.finish(conn, key, owner, "processed", message_id=message_row_id)
    messages.notify(conn, message_row_id)
    return StoreResult("stored", message_row_id)


def _run_handlers(conn: Any, plan: Plan, message_row_id: int, job: Job, fetched: FetchedMessage,
                  message: Message) -> None:
    """Run *plan*'s Python handlers for the message just stored, in its transaction (one that raises rolls it back)."""
    if plan.handlers:
        run_handlers(conn, plan.handlers, Inbound(
            message_row_id=message_row_id, tenant=job.tenant, account=job.account, provider=job.provider,
            identity=job.identity(), provider_message_id=fetched.provider_message_id, folder=fetched.folder,
            message=message, raw=fetched.raw))


class StoreItem(NamedTuple):
    """One message of a batch store transaction (:func:`commit_batch`)."""

    key: ledger.Key
    owner: str
    job: Job
    fetched: FetchedMessage
    message: Message
    #: The outbox rows and Python handlers the message is owed once stored.
    plan: Plan = NOTHING


def commit_batch(conn: Any, items: Sequence[StoreItem], *, dedupe_message_id: bool,
                 keep_raw: bool) -> list[StoreResult]:
    """:func:`commit_message` for many messages in one transaction, with a handful of statements for all.

    The same lock order as one message: every ledger row first (in key
    order), then every Message-ID advisory lock (in lock-key order). The
    outbox rows of every stored message go in with one statement; Python
    handlers run per message, in order (one that raises rolls the whole
    batch back: the caller then stores one by one). Fencing
    is per row: a row whose claim was taken over is left alone (``lost``)
    and its message not written. A Message-ID met twice in the batch stores
    the first message and makes the second its duplicate, as two single
    stores one after the other would. One result per item, in order.
    """
    rows = ledger.hold_many(conn, [item.key for item in items])
    results: list[StoreResult | None] = [None] * len(items)
    live: list[int] = []
    for index, item in enumerate(items):
        row = rows.get(item.key)
        if row is None or row.status != "processing" or row.lease_owner != item.owner:
            results[index] = StoreResult("lost", row.message_id if row else None, row)
        else:
            live.append(index)
    originals: dict[int, int] = {}
    to_store = live
    if dedupe_message_id:
        ids = [(items[i].job.tenant, items[i].job.account, items[i].message.message_id) for i in live
               if items[i].message.message_id]
        messages.lock_message_ids(conn, ids)
        found = iter(messages.find_by_message_ids(conn, ids))
        first_in_batch: dict[tuple[str, str, str], int] = {}
        to_store = []
        for index in live:
            item = items[index]
            if not item.message.message_id:
                to_store.append(index)
                continue
            mid = (item.job.tenant, item.job.account, item.message.message_id)
            original = next(found)
            if original is not None:
                originals[index] = original
            elif mid in first_in_batch:
                originals[index] = -1 - first_in_batch[mid]  # resolved once the first one has its id
            else:
                first_in_batch[mid] = index
                to_store.append(index)
    stored_ids = messages.insert_messages(
        conn, [(items[i].job, items[i].fetched, items[i].message) for i in to_store], keep_raw=keep_raw)
    new_id = dict(zip(to_store, stored_ids))
    outbox.insert(conn, [row for index in to_store for row in items[index].plan.rows(
        new_id[index], items[index].fetched.raw, keep_raw=keep_raw)])
    for index in to_store:
        item = items[index]
        _run_handlers(conn, item.plan, new_id[index], item.job, item.fetched, item.message)
    finishes = []
    for index in live:
        item = items[index]
        if index in new_id:
            finishes.append(ledger.Finish(item.key, item.owner, "processed", message_id=new_id[index]))
            results[index] = StoreResult("stored", new_id[index])
        else:
            original = originals[index]
            if original < 0:
                original = new_id[-1 - original]
            finishes.append(ledger.Finish(item.key, item.owner, "duplicate", reason="message_id", message_id=original))
            results[index] = StoreResult("duplicate", original)
    ledger.finish_many(conn, finishes)
    messages.notify_many(conn, stored_ids)
    return results  # type: ignore[return-value]


async def fetch_all(source: Source, jobs: Sequence[Job], max_size: int) -> list[FetchedMessage | SourceUnavailable | Exception]:
    """What *source* returns for each of *jobs*, in order, or the exception it raised for that job.

    One ``fetch_many`` call where the source has one (IMAP: one command per
    folder); otherwise every job's ``fetch`` at once.
    """
    many = getattr(source, "fetch_many", None)
    if many is not None:
        return list(await many(jobs, max_size))
    results: list[FetchedMessage | SourceUnavailable | Exception | None] = [None] * len(jobs)

    async def one(index: int) -> None:
        try:
            results[index] = await source.fetch(jobs[index], max_size)
        except Exception as exc:  # noqa: BLE001 - that job's own failure
            results[index] = exc

    async with trio.open_nursery() as nursery:
        for index in range(len(jobs)):
            nursery.start_soon(one, index)
    return results  # type: ignore[return-value]


def _count_handled(plan: Plan) -> None:
    """Count the Python handlers that ran in a stored message's committed transaction."""
    for target, _ in plan.handlers:
        metrics.deliveries_delivered.labels(target).inc()


def _is_cancel(exc: BaseException) -> bool:
    """Whether *exc* is a trio cancellation, alone or as the only content of a nursery's exception group."""
    if isinstance(exc, trio.Cancelled):
        return True
    return isinstance(exc, BaseExceptionGroup) and exc.split(trio.Cancelled)[1] is None


class _Skip(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


class _Batch(NamedTuple):
    """The jobs of one :meth:`Processor.handle_batch` and what is known of each, by index."""

    jobs: Sequence[Job]
    keys: list[ledger.Key]
    #: Indexes of the jobs whose claim succeeded.
    work: list[int]
    helds: dict[int, Held]
    attempts: dict[int, int]
    #: One per job: None until decided, then its Outcome or the exception handle() would raise.
    results: list[Any]

    def failed(self, index: int) -> tuple[Job, ledger.Key, Held, int]:
        return self.jobs[index], self.keys[index], self.helds[index], self.attempts[index]


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

    # ------------------------------------------------------------------ batches

    async def handle_batch(self, jobs: Sequence[Job]) -> list[Outcome | Exception]:
        """Process *jobs* together; one result per job, in order: its Outcome, or the exception :meth:`handle` raises.

        One ledger-claim transaction for the batch, one fetch per source
        (``fetch_many`` where the source has it), the parses in parallel, and
        one store transaction (:func:`commit_batch`); each job's outcome is the
        one :meth:`handle` gives it. Jobs the batch does not take as they are
        go through :meth:`handle` after it: a job that names no message
        (ingress work for its source's ``ingest``), a second job for an
        identity already in the batch, and an identity another claim holds
        (busy, or a dead claim of this daemon to take over). When the store transaction
        fails, its messages are stored one by one, each in its own
        transaction, so a poison message fails alone.

        Cancellation: as :meth:`handle`; the claimed rows still open are
        recorded ``failed`` in one statement (shielded, bounded) first.
        """
        cfg = self.cfg
        if self.postgres.down:
            return [self._unreachable("ledger claim skipped: PostgreSQL is not answering") for _ in jobs]
        results: list[Outcome | Exception | None] = [None] * len(jobs)
        keys = [ledger.Key(job.tenant, job.account, job.identity()) for job in jobs]
        first: dict[ledger.Key, int] = {}
        later: list[int] = []
        for index, key in enumerate(keys):
            if key in first or not jobs[index].pointer.names_message:
                later.append(index)  # handle(): a second job for one identity, or ingress work (no ledger)
            else:
                first[key] = index
        batch = list(first.values())
        with ExitStack() as holding:
            helds = {i: holding.enter_context(self.claims.hold(self.claims.new_token())) for i in batch}
            requests = [ledger.ClaimRequest(keys[i], jobs[i].provider, jobs[i].id, helds[i].token) for i in batch]
            sent_at = trio.current_time()
            try:
                claims = await self.db.run(lambda conn: ledger.claim_many(conn, requests, lease=cfg.processing.lease),
                                           timeout=self._db_timeout(cfg))
            except psycopg.Error as exc:
                failure = await self._db_failure("ledger claim failed", exc)
                return [failure for _ in jobs]  # type: ignore[misc]
            work: list[int] = []
            attempts: dict[int, int] = {}
            debug = _log.isEnabledFor(logging.DEBUG)
            for index, claim in zip(batch, claims):
                job, row = jobs[index], claim.row
                if claim.verdict == "claimed":
                    helds[index].claimed(sent_at)
                    work.append(index)
                    attempts[index] = row.attempts
                    if debug:
                        log.event(_log, "job.claim", level=logging.DEBUG, **job.log_fields(),
                                  identity=keys[index].identity, ledger_attempt=row.attempts, owner=helds[index].token)
                elif claim.verdict == "terminal":
                    results[index] = self._report(job, row.attempts,
                                                  Outcome("duplicate", f"ledger_{row.status}", row.message_id),
                                                  identity=keys[index].identity)
                else:  # busy: handle() decides (the same job, another job, or a dead claim of ours)
                    later.append(index)
            if work:
                await self._work_batch(_Batch(jobs, keys, work, helds, attempts, results), cfg)
        for index in sorted(later):
            try:
                results[index] = await self.handle(jobs[index])
            except Exception as exc:  # noqa: BLE001 - classified by the consumer, as handle()'s
                results[index] = exc
        return results  # type: ignore[return-value]

    async def _work_batch(self, b: "_Batch", cfg: CoreConfig) -> None:
        """Fetch, parse and store the claimed jobs of *b*; sets the result of each of them.

        Runs inside every claim's ``scope``: a claim whose lease could not be
        confirmed cancels the batch's work, and every job still open records
        its failure (one statement) before the cancel goes on.
        """
        with ExitStack() as scopes:
            for index in b.work:
                scopes.enter_context(b.helds[index].scope)
            try:
                await self._fetch_parse_store(b, cfg)
            except BaseException as exc:
                still_open = [i for i in b.work if b.results[i] is None]
                await self._record_failures([b.failed(i) for i in still_open], exc, cfg)
                if isinstance(exc, Exception):
                    failure = await self._db_failure("PostgreSQL failed while storing", exc)
                    for index in still_open:
                        b.results[index] = failure
                else:
                    raise
        for index in b.work:
            if b.results[index] is None:  # the keeper cancelled a claim's scope: its lease could not be confirmed
                b.results[index] = TransientError(
                    f"{b.keys[index].identity}: ledger claim given up ({b.helds[index].lost})")

    async def _fetch_parse_store(self, b: "_Batch", cfg: CoreConfig) -> None:
        max_size = cfg.processing.max_message_size
        fetched: dict[int, FetchedMessage] = {}
        skips: dict[int, _Skip] = {}
        sources: dict[int, Source] = {}
        failures: list[tuple[int, Exception]] = []

        async def fetch_from(provider: str, indexes: list[int]) -> None:
            try:
                source = self.sources.get(provider)
            except LookupError as exc:
                failures.extend((i, PermanentError("no_source", str(exc))) for i in indexes)
                return
            got: list[Any]
            try:
                with trio.fail_after(cfg.processing.fetch_timeout):
                    got = await fetch_all(source, [b.jobs[i] for i in indexes], max_size)
            except trio.TooSlowError:
                # A job error (counts an attempt): a message that never downloads ends in the DLQ.
                got = [RuntimeError(f"fetch timed out after {cfg.processing.fetch_timeout:g}s") for _ in indexes]
            for index, result in zip(indexes, got):
                sources[index] = source
                if isinstance(result, SourceUnavailable):
                    skips[index] = _Skip(result.reason, result.detail)
                elif not isinstance(result, FetchedMessage):
                    failures.append((index, result))
                elif len(result.raw) > max_size:
                    skips[index] = _Skip("oversize",
                                         f"{len(result.raw)} bytes received, max_message_size is {max_size}")
                else:
                    fetched[index] = result

        by_provider: dict[str, list[int]] = {}
        for index in b.work:
            by_provider.setdefault(b.jobs[index].provider, []).append(index)
        async with trio.open_nursery() as nursery:
            for provider, indexes in by_provider.items():
                nursery.start_soon(fetch_from, provider, indexes)
        await self._fail_each(b, failures, cfg)
        for index, skip in skips.items():
            await self._skip_one(b, index, skip, cfg)

        order = [i for i in b.work if i in fetched]
        parsed = dict(zip(order, await self.parser.parse_many([fetched[i].raw for i in order]) if order else []))

        items = [StoreItem(b.keys[i], b.helds[i].token, b.jobs[i], fetched[i], parsed[i],
                           self.router.plan(b.jobs[i].tenant, b.jobs[i].account)) for i in order]
        stored = await self._store_batch(items, cfg)
        await self._fail_each(b, [(i, r) for i, r in zip(order, stored) if isinstance(r, Exception)], cfg)
        processed: list[int] = []
        for index, item, result in zip(order, items, stored):
            if isinstance(result, Exception):
                continue
            b.helds[index].released()
            try:
                outcome = self._stored_outcome(b.keys[index], result)
            except TransientError as exc:
                b.results[index] = exc
                continue
            b.results[index] = outcome
            if outcome.status == "processed":
                _count_handled(item.plan)
                processed.append(index)
        async with trio.open_nursery() as nursery:
            for index in processed:
                nursery.start_soon(self._after_commit, sources[index], b.jobs[index], b.results[index], cfg)
        for index in order:
            outcome = b.results[index]
            if isinstance(outcome, Outcome):
                b.results[index] = self._report(b.jobs[index], b.attempts[index], outcome,
                                                identity=b.keys[index].identity)

    async def _store_batch(self, items: list[StoreItem], cfg: CoreConfig) -> list[StoreResult | Exception]:
        """:func:`commit_batch` in one transaction; if it fails, each message in a transaction of its own."""
        if not items:
            return []
        dedupe, keep_raw = cfg.processing.dedupe_message_id, cfg.store.keep_raw
        try:
            return list(await self.db.run(
                lambda conn: commit_batch(conn, items, dedupe_message_id=dedupe, keep_raw=keep_raw),
                timeout=self._db_timeout(cfg)))
        except Exception as exc:  # noqa: BLE001 - one message may be the cause: store them one by one
            if isinstance(exc, psycopg.Error):
                failure = await self._db_failure("PostgreSQL failed while storing", exc)
                if isinstance(failure, DependencyDown):  # not answering: one by one would wait as long each
                    return [failure for _ in items]
            metrics.batch_fallbacks.inc()
            log.event(_log, "batch.store_failed", level=logging.WARNING, jobs=len(items),
                      error=f"{type(exc).__name__}: {exc}")
        results: list[StoreResult | Exception] = []
        for item in items:
            try:
                results.append(await self.db.run(
                    lambda conn, item=item: commit_message(conn, item.key, item.owner, item.job, item.fetched,
                                                           item.message, dedupe_message_id=dedupe, keep_raw=keep_raw,
                                                           plan=item.plan),
                    timeout=self._db_timeout(cfg)))
            except Exception as exc:  # noqa: BLE001 - this message's own failure
                results.append(exc)
        return results

    async def _fail_each(self, b: "_Batch", failures: Sequence[tuple[int, Exception]], cfg: CoreConfig) -> None:
        """As :meth:`handle` on a failure after the claim, for each ``(index, exception)``: record it (one
        statement per distinct exception: a folder's or a transaction's failure is shared by its jobs), and
        the job's result is what handle() raises."""
        shared: dict[int, tuple[Exception, list[int]]] = {}
        for index, exc in failures:
            shared.setdefault(id(exc), (exc, []))[1].append(index)
        for exc, indexes in shared.values():
            failure = await self._db_failure("PostgreSQL failed while storing", exc)
            await self._record_failures([b.failed(i) for i in indexes], exc, cfg)
            for index in indexes:
                b.results[index] = failure

    async def _skip_one(self, b: "_Batch", index: int, skip: _Skip, cfg: CoreConfig) -> None:
        job, key = b.jobs[index], b.keys[index]
        try:
            await self._finish_skip(key, b.helds[index].token, skip, cfg)
        except Exception as exc:  # noqa: BLE001 - as handle(): the skip could not be recorded
            b.results[index] = exc
            return
        b.helds[index].released()
        metrics.jobs_skipped.labels(job.provider, job.account, skip.reason).inc()
        b.results[index] = self._report(job, b.attempts[index], Outcome("skipped", skip.reason),
                                        identity=key.identity, detail=skip.detail)

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
        outcome = self._stored_outcome(key, result)
        if outcome.status == "processed":
            _count_handled(plan)
            await self._after_commit(source, job, outcome, cfg)
        return outcome

    @staticmethod
    def _stored_outcome(key: ledger.Key, result: StoreResult) -> Outcome:
        """What the store transaction's *result* means for the job; raises TransientError for a lost claim."""
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
        return Outcome("processed", None, result.message_row_id)

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
        await self._record_failures([(job, key, held, attempts)], exc, cfg)

    async def _record_failures(self, failed: Sequence[tuple[Job, ledger.Key, Held, int]], exc: BaseException,
                               cfg: CoreConfig) -> None:
        """Record that the claims of *failed* ended in *exc*: one shielded, bounded statement for all of them."""
        reason = exc.reason if isinstance(exc, PermanentError) else None
        errors = []
        for _, _, held, _ in failed:
            if _is_cancel(exc):
                errors.append(f"ledger lease lost: {held.lost}" if held.lost else "cancelled")
            else:
                errors.append(f"{type(exc).__name__}: {exc}")
        recorded: set[ledger.Key] = set()
        not_recorded = ""
        if self.postgres.down:
            # Pointless to wait for: the retry of this daemon takes the row over at once (holder_gone).
            not_recorded = "PostgreSQL is not answering"
        else:
            items = [ledger.Failure(key, held.token, error, reason)
                     for (_, key, held, _), error in zip(failed, errors)]
            with trio.move_on_after(FAIL_RECORD_TIMEOUT) as scope:
                scope.shield = True
                try:
                    recorded = await self.db.run(lambda conn: ledger.fail_many(conn, items),
                                                 timeout=min(FAIL_RECORD_TIMEOUT, self._db_timeout(cfg)))
                except Exception as db_exc:  # noqa: BLE001 - best effort: the row is taken over anyway
                    not_recorded = f"{type(db_exc).__name__}: {db_exc}"
        for (job, key, held, attempts), error in zip(failed, errors):
            if not_recorded:
                log.event(_log, "ledger.fail_not_recorded", level=logging.WARNING, **job.log_fields(),
                          error=not_recorded)
            if key in recorded:
                held.released()
            metrics.ledger_outcomes.labels(job.provider, job.account, "failed", reason or type(exc).__name__).inc()
            log.event(_log, "job.failed", level=logging.WARNING, **job.log_fields(), identity=key.identity,
                      ledger_attempt=attempts, recorded=key in recorded, error=error)

    def _report(self, job: Job, attempts: int, outcome: Outcome, **fields: Any) -> Outcome:
        metrics.child(metrics.ledger_outcomes, job.provider, job.account, outcome.status, outcome.reason or "").inc()
        log.event(_log, f"job.{outcome.status}", **job.log_fields(), ledger_attempt=attempts,
                  reason=outcome.reason, message_row_id=outcome.message_row_id, **fields)
        return outcome
