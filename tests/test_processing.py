"""Processor.handle and handle_batch against real PostgreSQL: stored exactly once, or recorded why not.

The message source is an in-process implementation of the provider fetch
interface (``source.Source``); PostgreSQL is a real private server.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

import psycopg
import pytest
import trio

from inboundd import metrics
from inboundd.config import PostgresConfig
from inboundd.jobs import GooglePointer, Job, new_job
from inboundd.claims import TAKEN_BACK
from inboundd.mime import parse_message
from inboundd.outcomes import DependencyDown, Outcome, PermanentError, TransientError
from inboundd.processing import Processor
from inboundd.source import FetchedMessage, SourceRegistry, SourceUnavailable
from inboundd.store import ledger, messages
from inboundd.store.db import Database
from fakes import ACCOUNT, TENANT, FakeSource, job_for, mime, processing_config, processor
from waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "corpus"


def key_of(job: Job) -> ledger.Key:
    return ledger.Key(job.tenant, job.account, job.identity())


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


async def query(db: Database, sql: str, *args: Any) -> list[tuple]:
    return await db.run(lambda conn: conn.execute(sql, args).fetchall())


async def ledger_row(db: Database, job: Job) -> ledger.LedgerRow | None:
    return await db.run(ledger.get, key_of(job))


async def message_count(db: Database) -> int:
    return (await query(db, "SELECT count(*) FROM inbound_messages"))[0][0]


async def lease_expired(db: Database, job: Job) -> bool:
    rows = await query(db, "SELECT lease_expires_at <= clock_timestamp() FROM inbound_ledger"
                           " WHERE tenant = %s AND account = %s AND identity = %s", *key_of(job))
    return bool(rows and rows[0][0])


def outcome_count(outcome: str, reason: str = "") -> float:
    value = metrics.REGISTRY.get_sample_value(
        "inboundd_ledger_outcomes_total", {"provider": "imap", "account": ACCOUNT, "outcome": outcome, "reason": reason}
    )
    return value or 0.0


# ---------------------------------------------------------------------------- the happy path


async def test_a_new_message_is_stored_once_with_its_attachment_and_announced(
    db: Database, source: FakeSource, pg_dsn: str
) -> None:
    pdf = b"%PDF-1.4 " + os.urandom(3000)
    job = job_for(1)
    raw = mime(1, attachment=pdf, body="Please see the invoice.")
    source.put(job, raw)
    before = outcome_count("processed")
    with psycopg.connect(pg_dsn, autocommit=True) as listener:
        listener.execute("LISTEN inbound_message")
        outcome = await processor(db, source).handle(job)
        notes = await trio.to_thread.run_sync(lambda: list(listener.notifies(timeout=10, stop_after=1)))

    assert outcome.status == "processed" and outcome.reason is None
    assert [(n.channel, n.payload) for n in notes] == [("inbound_message", str(outcome.message_row_id))]
    stored = await db.run(messages.get_message, outcome.message_row_id)
    assert stored["identity"] == "imap:INBOX:7:1" and stored["provider"] == "imap"
    assert (stored["tenant"], stored["account"], stored["job_id"]) == (TENANT, ACCOUNT, job.id)
    assert stored["provider_message_id"] == "7:1" and stored["folder"] == "INBOX"
    assert stored["message_id"] == "msg-1@example.com" and stored["thread_key"] == "msg-1@example.com"
    assert (stored["from_name"], stored["from_address"]) == ("Customer 1", "c1@example.com")
    assert stored["to_addresses"] == [{"name": "", "address": "support@example.org"}]
    assert stored["subject"] == "order 1" and stored["text_body"] == "Please see the invoice."
    assert stored["sent_at"].isoformat() == "2023-11-08T09:00:00+00:00"
    assert stored["size"] == len(raw) and stored["raw"] is None
    assert ["Subject", "order 1"] in stored["headers"]
    (att,) = await db.run(messages.attachments, outcome.message_row_id)
    assert (att["filename"], att["content_type"], att["size"], att["inline"]) == ("invoice.pdf", "application/pdf",
                                                                                 len(pdf), False)
    assert att["data"] == pdf and att["sha256"] == hashlib.sha256(pdf).hexdigest()
    row = await ledger_row(db, job)
    assert (row.status, row.attempts, row.message_id, row.lease_owner) == ("processed", 1, outcome.message_row_id, None)
    assert source.committed == [(job.id, outcome)]
    assert outcome_count("processed") == before + 1


@pytest.mark.parametrize("keep_raw", [True, False])
async def test_raw_mime_is_kept_only_when_configured(db: Database, source: FakeSource, keep_raw: bool) -> None:
    job = job_for(1)
    raw = mime(1, attachment=b"\x00\x01binary")
    source.put(job, raw)
    outcome = await processor(db, source, keep_raw=keep_raw).handle(job)
    stored = await db.run(messages.get_message, outcome.message_row_id)
    if keep_raw:
        assert bytes(stored["raw"]) == raw
        assert parse_message(bytes(stored["raw"])).message_id == "msg-1@example.com"  # re-parseable
    else:
        assert stored["raw"] is None


# ---------------------------------------------------------------------------- dedupe


async def test_the_same_job_twice_stores_one_row_and_the_second_is_a_duplicate(
    db: Database, source: FakeSource
) -> None:
    job = job_for(1)
    source.put(job, mime(1))
    proc = processor(db, source)
    first = await proc.handle(job)
    second = await proc.handle(job)  # e.g. the ack was lost after commit
    assert first.status == "processed"
    assert second == Outcome("duplicate", "ledger_processed", first.message_row_id)
    assert await message_count(db) == 1
    assert source.fetches == [job.id]  # the duplicate did not even fetch
    assert (await ledger_row(db, job)).attempts == 1


async def test_one_message_id_through_two_pointers_is_stored_once(db: Database, source: FakeSource) -> None:
    first_job, second_job = job_for(1), job_for(2)  # e.g. before and after a UIDVALIDITY reset
    source.put(first_job, mime(1, message_id="<same@example.com>"))
    source.put(second_job, mime(2, message_id="<same@example.com>"))
    proc = processor(db, source)
    first = await proc.handle(first_job)
    second = await proc.handle(second_job)
    assert first.status == "processed"
    assert second == Outcome("duplicate", "message_id", first.message_row_id)
    assert await message_count(db) == 1
    row = await ledger_row(db, second_job)
    assert (row.status, row.reason, row.message_id) == ("duplicate", "message_id", first.message_row_id)
    # Only the stored one gets its post-action: a different email reusing a Message-ID
    # must never be moved or deleted on the server without being stored itself.
    assert [job_id for job_id, _ in source.committed] == [first_job.id]


async def test_message_id_dedupe_is_per_account(db: Database, source: FakeSource) -> None:
    jobs = [job_for(1, account="support"), job_for(1, account="sales")]
    for job in jobs:
        source.put(job, mime(1, message_id="<same@example.com>"))
    outcomes = [await processor(db, source).handle(job) for job in jobs]
    assert [o.status for o in outcomes] == ["processed", "processed"]


async def test_with_message_id_dedupe_off_both_are_stored(db: Database, source: FakeSource) -> None:
    jobs = [job_for(1), job_for(2)]
    for job in jobs:
        source.put(job, mime(1, message_id="<reused-by-a-broken-sender@example.com>"))
    outcomes = [await processor(db, source, dedupe=False).handle(job) for job in jobs]
    assert [o.status for o in outcomes] == ["processed", "processed"]
    assert await message_count(db) == 2


async def test_messages_without_message_id_are_never_message_id_duplicates(db: Database, source: FakeSource) -> None:
    jobs = [job_for(1), job_for(2)]
    for job in jobs:
        source.put(job, mime(1, message_id=None))
    outcomes = [await processor(db, source).handle(job) for job in jobs]
    assert [o.status for o in outcomes] == ["processed", "processed"]


async def test_concurrent_same_message_id_through_many_pointers_stores_one(db: Database, source: FakeSource) -> None:
    jobs = [job_for(uid) for uid in range(1, 9)]
    for job in jobs:
        source.put(job, mime(job.pointer.uid, message_id="<race@example.com>"))
    proc = processor(db, source)
    outcomes: list[Outcome] = []

    async def run(job: Job) -> None:
        outcomes.append(await proc.handle(job))

    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(run, job)
    assert sorted(o.status for o in outcomes) == ["duplicate"] * 7 + ["processed"]
    assert await message_count(db) == 1


# ---------------------------------------------------------------------------- races on one identity


async def test_concurrent_handles_of_one_identity_have_exactly_one_winner(db: Database, source: FakeSource) -> None:
    racers = 8
    jobs = [job_for(1, job_id=f"pointer-{n}") for n in range(racers)]  # 8 pointers at one message
    gate = trio.Event()
    outcomes: list[Outcome] = []

    async def slow_fetch(job: Job) -> bytes:
        await gate.wait()  # the winner holds its claim until every loser has answered
        return mime(1)

    source.put(jobs[0], slow_fetch)
    proc = processor(db, source)

    async def run(job: Job) -> None:
        outcomes.append(await proc.handle(job))
        if len(outcomes) == racers - 1:
            gate.set()

    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(run, job)
    assert sorted(o.status for o in outcomes) == ["duplicate"] * (racers - 1) + ["processed"]
    assert sorted({o.reason for o in outcomes if o.status == "duplicate"}) == ["in_flight"]
    assert len(source.fetches) == 1
    assert await message_count(db) == 1
    row = await ledger_row(db, jobs[0])
    assert (row.status, row.attempts) == ("processed", 1)


async def test_a_redelivered_job_whose_holder_is_alive_is_retried_not_acked(db: Database, source: FakeSource) -> None:
    job = job_for(1)
    gate, fetching = trio.Event(), trio.Event()

    async def slow_fetch(_: Job) -> bytes:
        fetching.set()
        await gate.wait()
        return mime(1)

    source.put(job, slow_fetch)
    proc = processor(db, source, lease=30)
    async with trio.open_nursery() as nursery:
        results: list[Outcome] = []

        async def holder() -> None:
            results.append(await proc.handle(job))

        nursery.start_soon(holder)
        await fetching.wait()
        # The queue reclaimed the same job and gave it to another consumer: it must not ack.
        with pytest.raises(TransientError, match="being processed") as info:
            await proc.handle(job)
        assert 25 < info.value.retry_after <= 30
        gate.set()
    assert results[0].status == "processed"
    assert await message_count(db) == 1


# ---------------------------------------------------------------------------- crashes and failures


async def test_cancelled_between_claim_and_commit_is_retried_and_stored_not_duplicate(
    db: Database, source: FakeSource
) -> None:
    job = job_for(1)
    fetching = trio.Event()

    async def hang(_: Job) -> bytes:
        fetching.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    source.put(job, hang)
    proc = processor(db, source)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proc.handle, job)
        await fetching.wait()
        nursery.cancel_scope.cancel()
    row = await ledger_row(db, job)
    assert (row.status, row.last_error, row.lease_owner) == ("failed", "cancelled", None)
    assert await message_count(db) == 0

    source.put(job, mime(1))
    outcome = await proc.handle(job)  # a failed row needs no lease expiry
    assert outcome.status == "processed"
    row = await ledger_row(db, job)
    assert (row.status, row.attempts) == ("processed", 2)
    assert await message_count(db) == 1


async def test_a_failed_attempt_is_recorded_and_retried(db: Database, source: FakeSource) -> None:
    job = job_for(1)
    source.put(job, RuntimeError("IMAP said BAD"))
    proc = processor(db, source)
    with pytest.raises(RuntimeError, match="IMAP said BAD"):
        await proc.handle(job)
    row = await ledger_row(db, job)
    assert (row.status, row.last_error, row.attempts) == ("failed", "RuntimeError: IMAP said BAD", 1)

    source.put(job, mime(1))
    assert (await proc.handle(job)).status == "processed"
    row = await ledger_row(db, job)
    assert (row.status, row.attempts, row.last_error) == ("processed", 2, "RuntimeError: IMAP said BAD")


async def test_a_transient_source_error_stays_transient_and_is_retryable(db: Database, source: FakeSource) -> None:
    job = job_for(1)
    source.put(job, TransientError("throttled", retry_after=7))
    with pytest.raises(TransientError) as info:
        await processor(db, source).handle(job)
    assert info.value.retry_after == 7
    assert (await ledger_row(db, job)).status == "failed"


async def test_a_provider_without_a_source_is_a_permanent_error(db: Database) -> None:
    job = job_for(1)
    proc = Processor(db, SourceRegistry(), processing_config(), "test-instance")
    with pytest.raises(PermanentError) as info:
        await proc.handle(job)
    assert info.value.reason == "no_source"
    row = await ledger_row(db, job)
    assert (row.status, row.reason) == ("failed", "no_source")


async def test_postgresql_unreachable_is_a_transient_error(source: FakeSource) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from services import free_port

    dead = Database(PostgresConfig(dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/x", connect_timeout=1.0))
    await dead.open()
    try:
        job = job_for(1)
        source.put(job, mime(1))
        with pytest.raises(TransientError, match="ledger claim failed"):
            await processor(dead, source).handle(job)
        assert source.fetches == []  # nothing fetched without a claim
    finally:
        await dead.close()


async def test_a_holder_whose_lease_was_taken_over_cannot_commit(db: Database, source: FakeSource) -> None:
    job = job_for(1)
    slow_gate, slow_fetching = trio.Event(), trio.Event()

    async def slow(_: Job) -> bytes:
        slow_fetching.set()
        await slow_gate.wait()
        return mime(1, body="from the slow holder")

    source.put(job, slow)
    slow_proc = processor(db, source, lease=1.5, fetch_timeout=30.0)  # this holder overruns its lease
    results: list[Outcome] = []
    async with trio.open_nursery() as nursery:

        async def slow_holder() -> None:
            results.append(await slow_proc.handle(job))

        nursery.start_soon(slow_holder)
        await slow_fetching.wait()
        await eventually(lambda: lease_expired(db, job), 10, "the slow holder's lease to expire")
        source.put(job, mime(1, body="from the second holder"))
        taken = await processor(db, source).handle(job)
        assert taken.status == "processed"
        slow_gate.set()
    # The slow holder finds the row terminal under another owner: no second row, it acks as a duplicate.
    assert results == [Outcome("duplicate", "ledger_processed", taken.message_row_id)]
    rows = await query(db, "SELECT text_body FROM inbound_messages")
    assert rows == [("from the second holder\n",)]
    assert (await ledger_row(db, job)).attempts == 2


# ---------------------------------------------------------------------------- recovery in seconds


def takeovers(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("inboundd_ledger_takeovers_total", {"reason": reason}) or 0.0


def gated(n: int) -> tuple[Callable[[Job], Awaitable[bytes]], trio.Event, trio.Event]:
    """A fetch of message *n* that signals ``fetching`` and then waits for ``gate``: (fetch, gate, fetching)."""
    gate, fetching = trio.Event(), trio.Event()

    async def fetch(_: Job) -> bytes:
        fetching.set()
        await gate.wait()
        return mime(n)

    return fetch, gate, fetching


async def hold_row(db: Database, job: Job, owner: str, lease: float = 300.0) -> None:
    """A claim by *owner* that no task of this test holds (what a killed process leaves behind)."""
    claim = await db.run(lambda conn: ledger.claim(conn, key_of(job), provider="imap", job_id=job.id, owner=owner,
                                                   lease=lease))
    assert claim.verdict == "claimed"


async def test_a_row_left_by_an_earlier_life_of_this_daemon_is_taken_over_at_once(
        db: Database, source: FakeSource) -> None:
    job = job_for(1)
    await hold_row(db, job, "test-instance:" + "e" * 16)        # a 300 s lease, far from expiring
    proc = processor(db, source)
    source.put(job, mime(1))
    before = takeovers("holder_gone")
    outcome = await proc.handle(job)
    assert outcome.status == "processed"                          # not "busy for 300 s"
    assert (await ledger_row(db, job)).attempts == 2
    assert takeovers("holder_gone") == before + 1
    # Another daemon's live claim is still respected: only our own dead tokens are taken.
    other = job_for(2)
    await hold_row(db, other, "other-instance:" + "e" * 16)
    source.put(other, mime(2))
    with pytest.raises(TransientError, match="being processed"):
        await proc.handle(other)


async def test_earlier_lives_rows_are_taken_back_at_start_and_this_lifes_are_kept(
        db: Database, source: FakeSource) -> None:
    dead, other = job_for(1), job_for(2)
    await hold_row(db, dead, "test-instance:" + "d" * 16)
    await hold_row(db, other, "test-instance:x:" + "d" * 16)    # another instance whose id starts like ours
    proc = processor(db, source)
    slow, gate, fetching = gated(3)
    live = job_for(3)
    source.put(live, slow)
    before = takeovers("taken_back_at_start")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proc.handle, live)
        await fetching.wait()
        await nursery.start(proc.claims.run)
        await eventually(lambda: ledger_row(db, dead), 10, "the dead row")
        row = await eventually(lambda: _failed(db, dead), 10, "the dead life's row to be taken back")
        assert row.last_error == TAKEN_BACK and row.lease_owner is None
        assert (await ledger_row(db, other)).status == "processing"
        assert (await ledger_row(db, live)).status == "processing"   # this life's claim: untouched
        gate.set()
        await eventually(lambda: _status(db, live, "processed"), 10, "the live job to finish")
        nursery.cancel_scope.cancel()
    assert takeovers("taken_back_at_start") == before + 1


async def _failed(db: Database, job: Job) -> ledger.LedgerRow | None:
    row = await ledger_row(db, job)
    return row if row is not None and row.status == "failed" else None


async def _status(db: Database, job: Job, status: str) -> bool:
    row = await ledger_row(db, job)
    return row is not None and row.status == status


async def test_a_long_job_keeps_its_claim_by_renewal_and_another_daemon_waits(
        db: Database, source: FakeSource) -> None:
    job = job_for(1)
    slow, gate, fetching = gated(1)
    source.put(job, slow)
    proc = processor(db, source, lease=1.5, fetch_timeout=30.0)
    results: list[Outcome] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(proc.claims.run)

        async def holder() -> None:
            results.append(await proc.handle(job))

        nursery.start_soon(holder)
        await fetching.wait()
        await trio.sleep(4.5)                      # three leases
        assert not await lease_expired(db, job)    # renewed all along
        registry = SourceRegistry()
        registry.register("imap", source)
        other = Processor(db, registry, processing_config(lease=1.5), "other-instance")
        with pytest.raises(TransientError, match="being processed"):
            await other.handle(job)
        gate.set()
        await eventually(lambda: results, 10, "the long job to finish")
        nursery.cancel_scope.cancel()
    assert results[0].status == "processed"
    assert (await ledger_row(db, job)).attempts == 1


async def test_a_claim_whose_lease_cannot_be_renewed_stops_working_and_is_retried(
        db: Database, source: FakeSource, pg_dsn: str) -> None:
    from daemon_harness import TableLock

    job = job_for(1)
    fetching = trio.Event()
    stopped: list[BaseException] = []

    async def hang(_: Job) -> bytes:
        fetching.set()
        try:
            await trio.sleep_forever()
        except BaseException as exc:
            stopped.append(exc)
            raise
        raise AssertionError("unreachable")

    source.put(job, hang)
    proc = processor(db, source, lease=1.5, fetch_timeout=30.0)
    expired_before = metrics.REGISTRY.get_sample_value("inboundd_ledger_lease_events_total",
                                                       {"event": "expired"}) or 0
    async with trio.open_nursery() as nursery:
        await nursery.start(proc.claims.run)
        started = trio.current_time()
        lock = None

        async def holder() -> None:
            with pytest.raises(TransientError, match="ledger claim given up"):
                await proc.handle(job)

        nursery.start_soon(holder)
        await fetching.wait()
        lock = TableLock(pg_dsn, "inbound_ledger")   # renewals now fail: the lease cannot be confirmed
        try:
            await eventually(lambda: stopped, 5, "the job's work to be cancelled")
            assert trio.current_time() - started < 1.5 + 1.0
        finally:
            lock.release()
        nursery.cancel_scope.cancel()
    assert isinstance(stopped[0], trio.Cancelled)
    assert metrics.REGISTRY.get_sample_value("inboundd_ledger_lease_events_total",
                                             {"event": "expired"}) == expired_before + 1
    # The retry (this daemon's) takes the row over at once, recorded or not.
    source.put(job, mime(1))
    assert (await proc.handle(job)).status == "processed"


async def test_postgresql_cut_off_mid_job_is_a_dependency_wait_then_a_take_over(
        db: Database, source: FakeSource, pg_dsn: str) -> None:
    job = job_for(1)

    async def cut_off(_: Job) -> bytes:
        # Every pooled connection of the daemon dies under it (a PostgreSQL restart, say).
        def terminate() -> None:
            with psycopg.connect(pg_dsn, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                              " WHERE application_name = 'inboundd' AND pid <> pg_backend_pid()")
        await trio.to_thread.run_sync(terminate)
        return mime(1)

    source.put(job, cut_off)
    proc = processor(db, source)
    with pytest.raises(DependencyDown) as info:
        await proc.handle(job)
    assert info.value.dependency == "postgres" and proc.postgres.down
    with pytest.raises(DependencyDown):   # known down: no claim is even tried
        await proc.handle(job)
    with trio.fail_after(10):
        await info.value.wait_up()        # the probe finds the server answering again
    assert not proc.postgres.down
    row = await ledger_row(db, job)
    assert row.status == "processing"     # the failure could not be recorded: the store was cut off
    source.put(job, mime(1))
    before = takeovers("holder_gone")
    assert (await proc.handle(job)).status == "processed"    # at once: the dead token is ours
    assert takeovers("holder_gone") == before + 1
    assert (await ledger_row(db, job)).attempts == 2
    assert await message_count(db) == 1


async def test_a_deliver_handler_slower_than_the_bound_is_a_job_error_not_an_outage(
        db: Database, source: FakeSource) -> None:
    import time

    from inboundd.config_schema import DeliverConfig
    from inboundd.deliver.targets import Router, Target

    def slow_handler(conn: Any, inbound: Any) -> None:
        time.sleep(2.5)   # longer than half the 2 s lease plus the margin, in the store transaction

    registry = SourceRegistry()
    registry.register("imap", source)
    router = Router([Target(DeliverConfig(id="app", kind="python", handler="x:y"), handler=slow_handler)])
    proc = Processor(db, registry, processing_config(lease=2.0), "test-instance", router=router)
    job = job_for(1)
    source.put(job, mime(1))
    with pytest.raises(RuntimeError, match="ran longer than its 1s bound while PostgreSQL answered"):
        await proc.handle(job)
    assert not proc.postgres.down                  # no outage declared: the job counts an attempt instead

    async def transaction_ended() -> bool:
        busy = await query(db, "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'")
        return busy[0][0] == 0

    await eventually(transaction_ended, 10, "the given-up transaction to end")
    assert await message_count(db) == 0           # rolled back when the handler returned, not committed


# ---------------------------------------------------------------------------- skips


@pytest.mark.parametrize("reason", ["source_deleted", "source_moved", "uidvalidity_changed"])
async def test_an_unavailable_source_is_skipped_with_its_reason(db: Database, source: FakeSource, reason: str) -> None:
    job = job_for(1)
    source.put(job, SourceUnavailable(reason, "gone"))
    skips_before = metrics.REGISTRY.get_sample_value(
        "inboundd_skipped_total", {"provider": "imap", "account": ACCOUNT, "reason": reason}) or 0
    proc = processor(db, source)
    assert await proc.handle(job) == Outcome("skipped", reason)
    row = await ledger_row(db, job)
    assert (row.status, row.reason, row.lease_owner) == ("skipped", reason, None)
    assert metrics.REGISTRY.get_sample_value(
        "inboundd_skipped_total", {"provider": "imap", "account": ACCOUNT, "reason": reason}) == skips_before + 1
    # Terminal: a redelivery is a duplicate and never fetches again.
    assert await proc.handle(job) == Outcome("duplicate", "ledger_skipped", None)
    assert source.fetches == [job.id]
    assert await message_count(db) == 0
    assert source.committed == []


async def test_oversize_reported_by_the_provider_is_skipped_before_download(db: Database, source: FakeSource) -> None:
    job = job_for(1)
    source.put(job, mime(1))
    source.reported_size[job.identity()] = 10_000
    assert await processor(db, source, max_size=5_000).handle(job) == Outcome("skipped", "oversize")
    assert (await ledger_row(db, job)).reason == "oversize"


async def test_oversize_bytes_are_skipped_even_when_the_provider_did_not_say(db: Database, source: FakeSource) -> None:
    job = job_for(1)
    raw = mime(1, attachment=os.urandom(8_000))
    source.put(job, raw)  # no reported size: the cap is enforced on the bytes received
    assert await processor(db, source, max_size=len(raw) - 1).handle(job) == Outcome("skipped", "oversize")
    assert await message_count(db) == 0
    job2 = job_for(2)
    source.put(job2, raw)
    assert (await processor(db, source, max_size=len(raw)).handle(job2)).status == "processed"


# ---------------------------------------------------------------------------- the process dies (SIGKILL)

_CHILD = r"""
import sys, trio
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/tests")
from inboundd.config import PostgresConfig
from inboundd.jobs import decode
from inboundd.processing import Processor
from inboundd.source import FetchedMessage, SourceRegistry
from inboundd.store.db import Database
from fakes import processing_config

dsn, job, mode, raw = sys.argv[2], decode(sys.argv[3]), sys.argv[4], open(sys.argv[5], "rb").read()

class Source:
    async def fetch(self, job, max_size):
        if mode == "before_commit":
            print("fetching", flush=True)
            await trio.sleep_forever()
        return FetchedMessage(raw=raw, provider_message_id="x")
    async def after_commit(self, job, outcome):
        print("committed", flush=True)
        await trio.sleep_forever()  # killed here: before the queue ack

async def main():
    db = Database(PostgresConfig(dsn=dsn, pool_min=1, pool_max=2))
    await db.open()
    sources = SourceRegistry()
    sources.register("imap", Source())
    await Processor(db, sources, processing_config(dsn, lease=2.0, fetch_timeout=1.0), "child").handle(job)

trio.run(main)
"""


async def _run_child_until(pg_dsn: str, job: Job, mode: str, raw: bytes, tmp_path: Path, marker: str) -> None:
    raw_file = tmp_path / f"{mode}.eml"
    raw_file.write_bytes(raw)
    from inboundd.jobs import encode

    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(ROOT), pg_dsn, encode(job).decode(), mode, str(raw_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = await trio.to_thread.run_sync(proc.stdout.readline)
        assert line.strip() == marker, proc.stderr.read() if proc.poll() is not None else line
    finally:
        proc.send_signal(signal.SIGKILL)
        await trio.to_thread.run_sync(proc.wait)
    assert proc.returncode == -signal.SIGKILL


async def test_sigkill_between_claim_and_commit_leads_to_a_retry_that_stores(
    db: Database, source: FakeSource, pg_dsn: str, tmp_path: Path
) -> None:
    job = job_for(1)
    await _run_child_until(pg_dsn, job, "before_commit", mime(1), tmp_path, "fetching")
    row = await ledger_row(db, job)
    assert (row.status, row.job_id) == ("processing", job.id)
    assert row.lease_owner.startswith("child:")

    source.put(job, mime(1))
    proc = processor(db, source)
    # Until the dead holder's lease runs out: the re-delivered job is retried later, not acked ...
    with pytest.raises(TransientError):
        await proc.handle(job)
    # ... and another pointer at the same message acks without effect (the job above is still queued).
    assert await proc.handle(job_for(1, job_id="other-pointer")) == Outcome("duplicate", "in_flight", None)
    assert await message_count(db) == 0

    await eventually(lambda: lease_expired(db, job), 10, "the killed holder's lease to expire")
    outcome = await proc.handle(job)
    assert outcome.status == "processed"  # never "duplicate"
    row = await ledger_row(db, job)
    assert (row.status, row.attempts) == ("processed", 2)
    assert await message_count(db) == 1


async def test_sigkill_after_commit_before_ack_redelivery_is_a_harmless_duplicate(
    db: Database, source: FakeSource, pg_dsn: str, tmp_path: Path
) -> None:
    job = job_for(1)
    await _run_child_until(pg_dsn, job, "after_commit", mime(1), tmp_path, "committed")
    row = await ledger_row(db, job)
    assert row.status == "processed"

    source.put(job, mime(1))
    outcome = await processor(db, source).handle(job)  # the queue re-delivers the un-acked job
    assert outcome == Outcome("duplicate", "ledger_processed", row.message_id)
    assert await message_count(db) == 1
    assert source.fetches == []


# ---------------------------------------------------------------------------- the corpus, stored


async def test_every_corpus_message_is_stored_and_reads_back_as_parsed(db: Database, source: FakeSource) -> None:
    files = sorted(CORPUS.glob("*.eml"))
    assert len(files) >= 60
    proc = processor(db, source, dedupe=False)
    for uid, path in enumerate(files, 1):
        job = job_for(uid)
        raw = path.read_bytes()
        source.put(job, raw)
        outcome = await proc.handle(job)
        assert outcome.status == "processed", path.name
        parsed = parse_message(raw)
        stored = await db.run(messages.get_message, outcome.message_row_id)
        assert stored["subject"] == parsed.subject.replace("\x00", "\ufffd"), path.name
        assert stored["text_body"] == parsed.text_body and stored["html_body"] == parsed.html_body, path.name
        assert stored["message_id"] == parsed.message_id and stored["thread_key"] == parsed.thread_key, path.name
        assert stored["is_bounce"] == parsed.is_bounce and stored["auto_reason"] == parsed.auto_reason, path.name
        assert stored["defects"] == parsed.defects, path.name
        atts = await db.run(messages.attachments, outcome.message_row_id)
        assert [(a["filename"], a["content_type"], a["sha256"], a["content_id"], a["inline"]) for a in atts] == [
            (a.filename, a.content_type, a.sha256, a.content_id, a.inline) for a in parsed.attachments], path.name
        assert all(hashlib.sha256(a["data"]).hexdigest() == a["sha256"] for a in atts), path.name
    assert await message_count(db) == len(files)


@pytest.mark.parametrize(
    ("name", "subject", "from_address", "text_has"),
    [
        ("iso2022jp_7bit.eml", "会議の日程について", "sato@example.jp", "来週の会議の日程を調整させてください。"),
        ("koi8r_8bit.eml", "Заказ 1542: вопрос по доставке", "ivan.petrov@example.ru", "Когда будет доставлен"),
        ("shift_jis_base64.eml", "お問い合わせ：請求書について", "tanaka@example.co.jp", "① 請求書の再発行"),
        ("lying_latin1_smart_quotes.eml", None, None, "“it’s fixed” – it isn’t."),
        ("nul_byte.eml", "Scan job\ufffd 42", None, "Pages: 3\ufffd\ufffd"),
    ],
)
async def test_charsets_survive_the_round_trip_through_postgresql(
    db: Database, source: FakeSource, name: str, subject: str | None, from_address: str | None, text_has: str
) -> None:
    job = job_for(1)
    source.put(job, (CORPUS / name).read_bytes())
    outcome = await processor(db, source).handle(job)
    stored = await db.run(messages.get_message, outcome.message_row_id)
    if subject is not None:
        assert stored["subject"] == subject
    if from_address is not None:
        assert stored["from_address"] == from_address
    assert text_has in stored["text_body"]


async def test_attachments_round_trip_with_rfc2231_names_inline_images_and_nested_messages(
    db: Database, source: FakeSource
) -> None:
    names = ["rfc2231_filename_continuations.eml", "related_inline_images.eml", "forwarded_message_rfc822.eml"]
    stored: dict[str, list[dict[str, Any]]] = {}
    for uid, name in enumerate(names, 1):
        job = job_for(uid)
        source.put(job, (CORPUS / name).read_bytes())
        outcome = await processor(db, source).handle(job)
        stored[name] = await db.run(messages.attachments, outcome.message_row_id)
    (contract,) = stored["rfc2231_filename_continuations.eml"]
    assert contract["filename"] == "Договор поставки № 42 от 2023-11-01.pdf"
    assert contract["content_type"] == "application/pdf" and not contract["inline"]
    image = stored["related_inline_images.eml"][0]
    assert (image["filename"], image["content_id"], image["inline"], image["size"]) == (
        "image001.png", "image001.png@01DA12F3.4B5C6D70", True, 67)
    assert image["data"].startswith(b"\x89PNG")
    nested = [a for a in stored["forwarded_message_rfc822.eml"] if a["content_type"] == "message/rfc822"]
    assert len(nested) == 1
    assert parse_message(nested[0]["data"]).subject  # the forwarded message re-parses from the stored bytes
    for attachments in stored.values():
        for att in attachments:
            assert att["sha256"] == hashlib.sha256(att["data"]).hexdigest() and att["size"] == len(att["data"])


async def test_an_8mb_attachment_is_stored_intact(db: Database, source: FakeSource) -> None:
    payload = os.urandom(8 * 1024 * 1024)
    job = job_for(1)
    source.put(job, mime(1, attachment=payload))
    outcome = await processor(db, source).handle(job)
    (att,) = await db.run(messages.attachments, outcome.message_row_id)
    assert att["size"] == len(payload) and att["sha256"] == hashlib.sha256(payload).hexdigest()
    assert att["data"] == payload


async def test_a_message_id_longer_than_a_btree_entry_is_stored_and_still_dedupes(
    db: Database, source: FakeSource
) -> None:
    long_id = "<" + os.urandom(4000).hex() + "@example.com>"  # 8 KB of incompressible id
    jobs = [job_for(1), job_for(2)]
    for job in jobs:
        source.put(job, mime(1, message_id=long_id))
    proc = processor(db, source)
    first, second = [await proc.handle(job) for job in jobs]
    assert first.status == "processed"
    assert second == Outcome("duplicate", "message_id", first.message_row_id)
    plan = await query(db, "EXPLAIN SELECT id FROM inbound_messages WHERE tenant = 'a' AND account = 'b'"
                           " AND md5(message_id) = md5('x') AND message_id = 'x'")
    assert "inbound_messages_message_id_idx" in " ".join(line for (line,) in plan)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (psycopg.OperationalError("connection to server lost"), True),
        (psycopg.InterfaceError("the connection is closed"), True),
        (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), True),
        (psycopg.errors.CannotConnectNow("the database system is starting up"), True),
        (psycopg.errors.TooManyConnections("too many clients"), True),
        (psycopg.errors.DiskFull("no space left"), True),
        (psycopg.errors.SerializationFailure("could not serialize"), True),
        (psycopg.errors.DeadlockDetected("deadlock detected"), True),
        (psycopg.errors.ProgramLimitExceeded("index row size 8040 exceeds maximum 2704"), False),
        (psycopg.errors.UniqueViolation("duplicate key"), False),
        (psycopg.errors.UndefinedTable("relation does not exist"), False),
        (RuntimeError("not a database error"), False),
    ],
)
def test_which_database_errors_are_transient(exc: BaseException, transient: bool) -> None:
    from inboundd.processing import is_transient_db_error

    assert is_transient_db_error(exc) is transient


# ---------------------------------------------------------------------------- batches (handle_batch)
#
# Every test states what one-by-one processing gives and checks that a batch gives the same: the same
# outcome per job, the same stored rows, the same ledger — while a poison message, a claim lost mid-batch
# or a cancel touch only the jobs they concern.


def count_transactions(db: Database, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the transactions run through *db* from now on (``[n]``)."""
    counted = [0]
    real = db.run

    async def counting(fn: Any, *args: Any, **kwargs: Any) -> Any:
        counted[0] += 1
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(db, "run", counting)
    return counted


async def stored(db: Database, account: str) -> list[tuple]:
    """What the store holds for *account*: per identity, the message and its attachments, and the ledger row."""
    return await query(
        db,
        "SELECT l.identity, l.status, l.reason, l.attempts, m.subject, m.message_id, m.from_address, m.text_body,"
        " (SELECT array_agg(a.sha256 ORDER BY a.position) FROM inbound_attachments a WHERE a.message_id = m.id),"
        " dup.identity"
        " FROM inbound_ledger l LEFT JOIN inbound_messages m ON m.id = l.message_id AND l.status = 'processed'"
        " LEFT JOIN inbound_messages dup ON dup.id = l.message_id AND l.status = 'duplicate'"
        " WHERE l.account = %s ORDER BY l.identity", account)


def scenario(account: str, source: FakeSource) -> tuple[list[Job], list[Job]]:
    """Jobs stored first, then a batch: new, with attachments, Message-ID duplicates (of a stored message
    and within the batch), an identity already processed, the same job twice, skips and a source failure."""
    def job(uid: int, **kw: Any) -> Job:
        return job_for(uid, account=account, **kw)

    earlier = [job(1), job(2)]
    source.put(earlier[0], mime(1))
    source.put(earlier[1], mime(2))
    batch = [job(10), job(11), job(12), job(13), job(14), job(15), job(1), job(16), job(17), job(18), job(19),
             job(20)]
    again = batch[0]
    source.put(batch[0], mime(10))
    source.put(batch[1], mime(11, attachment=b"%PDF-1.4 eleven"))
    source.put(batch[2], mime(12, message_id="<msg-2@example.com>"))  # a duplicate of a stored message
    source.put(batch[3], mime(13, message_id="<same@example.com>"))
    source.put(batch[4], mime(14, message_id="<same@example.com>", body="second with that id"))
    source.put(batch[5], mime(15, message_id=None))
    source.put(batch[7], SourceUnavailable("source_deleted", "gone"))
    source.put(batch[8], mime(17) + b"x" * 5000)  # over max_size
    source.put(batch[9], TransientError("IMAP server unreachable"))
    source.put(batch[10], mime(19, message_id=None))
    source.put(batch[11], mime(20, attachment=b"twenty"))
    return earlier, [*batch, again]


def comparable(result: Any, ids: dict[int, str]) -> Any:
    """A result with the message row id replaced by the identity it names (ids differ between the runs)."""
    if isinstance(result, Outcome):
        return (result.status, result.reason, ids.get(result.message_row_id) if result.message_row_id else None)
    return (type(result).__name__, str(result).split(": ", 1)[0])


async def identities(db: Database) -> dict[int, str]:
    return dict(await query(db, "SELECT id, identity FROM inbound_messages"))


async def test_a_batch_gives_every_job_the_outcome_and_rows_one_by_one_processing_gives(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    one_source, batch_source = FakeSource(), FakeSource()
    earlier_one, jobs_one = scenario("one", one_source)
    earlier_batch, jobs_batch = scenario("batch", batch_source)
    single = processor(db, one_source, max_size=4000)
    together = processor(db, batch_source, max_size=4000)
    for job in earlier_one:
        await single.handle(job)
    for job in earlier_batch:
        await together.handle(job)

    one_by_one: list[Any] = []
    for job in jobs_one:
        try:
            one_by_one.append(await single.handle(job))
        except Exception as exc:  # noqa: BLE001 - what the consumer would classify
            one_by_one.append(exc)
    counted = count_transactions(db, monkeypatch)
    in_batch = await together.handle_batch(jobs_batch)
    transactions = counted[0]
    ids = await identities(db)
    assert [comparable(r, ids) for r in in_batch] == [comparable(r, ids) for r in one_by_one]
    assert [comparable(r, ids) for r in in_batch] == [
        ("processed", None, "imap:INBOX:7:10"), ("processed", None, "imap:INBOX:7:11"),
        ("duplicate", "message_id", "imap:INBOX:7:2"), ("processed", None, "imap:INBOX:7:13"),
        ("duplicate", "message_id", "imap:INBOX:7:13"), ("processed", None, "imap:INBOX:7:15"),
        ("duplicate", "ledger_processed", "imap:INBOX:7:1"), ("skipped", "source_deleted", None),
        ("skipped", "oversize", None), ("TransientError", "IMAP server unreachable"),
        ("processed", None, "imap:INBOX:7:19"), ("processed", None, "imap:INBOX:7:20"),
        ("duplicate", "ledger_processed", "imap:INBOX:7:10"),
    ]
    assert await stored(db, "batch") == await stored(db, "one")
    # The claim, the store, each skip, the failure, and the second job for identity 10 (handled after).
    assert transactions == 6
    post_actions = {job_id for job_id, _ in batch_source.committed} & {j.id for j in jobs_batch}
    assert post_actions == {jobs_batch[i].id for i in (0, 1, 3, 5, 10, 11)}  # for what was stored, nothing else


async def test_twenty_new_messages_take_two_transactions(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    source = FakeSource()
    jobs = [job_for(uid) for uid in range(20)]
    for job in jobs:
        source.put(job, mime(job.pointer.uid, attachment=b"%PDF" if job.pointer.uid % 3 == 0 else None))
    counted = count_transactions(db, monkeypatch)
    results = await processor(db, source).handle_batch(jobs)
    assert [r.status for r in results] == ["processed"] * 20  # type: ignore[union-attr]
    assert counted[0] == 2
    rows = await query(db, "SELECT count(*), count(DISTINCT message_id) FROM inbound_ledger WHERE status = 'processed'")
    assert rows == [(20, 20)]
    assert (await query(db, "SELECT count(*) FROM inbound_attachments"))[0][0] == 7


async def test_a_poison_message_fails_alone_and_its_neighbours_are_stored(db: Database) -> None:
    # A rule an operator added (say, a constraint) that one message breaks.
    await db.run(lambda conn: conn.execute("""
        CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.subject = 'order 3' THEN RAISE EXCEPTION 'poison message refused'; END IF; RETURN NEW; END $$;
        CREATE TRIGGER poison BEFORE INSERT ON inbound_messages FOR EACH ROW EXECUTE FUNCTION poison();"""))
    source = FakeSource()
    jobs = [job_for(uid) for uid in range(1, 6)]
    for job in jobs:
        source.put(job, mime(job.pointer.uid))
    fallbacks = metrics.batch_fallbacks._value.get()
    results = await processor(db, source).handle_batch(jobs)
    assert [getattr(r, "status", type(r).__name__) for r in results] == [
        "processed", "processed", "RaiseException", "processed", "processed"]
    assert metrics.batch_fallbacks._value.get() - fallbacks == 1
    rows = await query(db, "SELECT identity, status, strpos(last_error, 'poison message refused') > 0 FROM inbound_ledger"
                           " ORDER BY identity")
    assert rows == [("imap:INBOX:7:1", "processed", None), ("imap:INBOX:7:2", "processed", None),
                    ("imap:INBOX:7:3", "failed", True), ("imap:INBOX:7:4", "processed", None),
                    ("imap:INBOX:7:5", "processed", None)]


async def test_a_claim_taken_over_mid_batch_is_not_written_and_the_rest_are(db: Database) -> None:
    source = FakeSource()
    jobs = [job_for(uid) for uid in range(1, 4)]
    source.put(jobs[0], mime(1))
    source.put(jobs[2], mime(3))

    async def taken_over(job: Job) -> bytes:
        # Another daemon takes the claim over (its lease ran out) while this one fetches.
        await db.run(lambda conn: conn.execute(
            "UPDATE inbound_ledger SET lease_owner = 'other-daemon:0001' WHERE identity = %s", (job.identity(),)))
        return mime(2)

    source.put(jobs[1], taken_over)
    results = await processor(db, source).handle_batch(jobs)
    assert results[0].status == results[2].status == "processed"  # type: ignore[union-attr]
    assert isinstance(results[1], TransientError) and "lease lost to other-daemon:0001" in str(results[1])
    assert await query(db, "SELECT count(*) FROM inbound_messages WHERE subject = 'order 2'") == [(0,)]
    assert await query(db, "SELECT status, lease_owner FROM inbound_ledger WHERE identity = %s",
                       jobs[1].identity()) == [("processing", "other-daemon:0001")]


async def test_a_batch_cancelled_mid_fetch_records_every_claim_failed_and_a_retry_stores(
        db: Database) -> None:
    source = FakeSource()
    jobs = [job_for(uid) for uid in range(1, 4)]
    started = trio.Event()

    async def hangs(job: Job) -> bytes:
        started.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    for job in jobs:
        source.put(job, hangs)
    proc = processor(db, source)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proc.handle_batch, jobs)
        await started.wait()
        nursery.cancel_scope.cancel()
    rows = await query(db, "SELECT status, last_error, attempts FROM inbound_ledger ORDER BY identity")
    assert rows == [("failed", "cancelled", 1)] * 3
    for job in jobs:
        source.put(job, mime(job.pointer.uid))
    assert [r.status for r in await proc.handle_batch(jobs)] == ["processed"] * 3  # type: ignore[union-attr]
    assert await query(db, "SELECT status, attempts FROM inbound_ledger ORDER BY identity") == [("processed", 2)] * 3


async def test_busy_identities_get_handles_verdict(db: Database) -> None:
    source = FakeSource()
    held, other_pointer, fresh = job_for(1), job_for(1, job_id="other-pointer"), job_for(2)
    source.put(fresh, mime(2))
    await db.run(lambda conn: ledger.claim(conn, key_of(held), provider="imap", job_id=held.id,
                                           owner="another-daemon:00000001", lease=60))
    results = await processor(db, source).handle_batch([held, fresh, other_pointer])
    assert isinstance(results[0], TransientError) and results[0].retry_after and results[0].retry_after > 50
    assert results[1].status == "processed"  # type: ignore[union-attr]
    assert results[2] == Outcome("duplicate", "in_flight", None)


async def test_postgresql_down_is_a_dependency_wait_for_every_job(source_free_port_dsn: str) -> None:
    db = Database(PostgresConfig(dsn=source_free_port_dsn, pool_min=0, pool_max=2, connect_timeout=1))
    await db.open()
    try:
        results = await processor(db, FakeSource(), lease=4).handle_batch([job_for(1), job_for(2)])
    finally:
        await db.close()
    assert [type(r) for r in results] == [DependencyDown, DependencyDown]


@pytest.fixture
def source_free_port_dsn() -> str:
    from services import free_port

    return f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"


async def test_a_source_with_fetch_many_is_asked_once_for_the_batch(db: Database) -> None:
    class ManySource(FakeSource):
        def __init__(self) -> None:
            super().__init__()
            self.batches: list[list[str]] = []

        async def fetch_many(self, jobs: list[Job], max_size: int) -> list[Any]:
            self.batches.append([job.id for job in jobs])
            out: list[Any] = []
            for job in jobs:
                try:
                    out.append(await self.fetch(job, max_size))
                except Exception as exc:  # noqa: BLE001
                    out.append(exc)
            return out

    source = ManySource()
    jobs = [job_for(uid) for uid in range(1, 4)]
    for job in jobs:
        source.put(job, mime(job.pointer.uid))
    results = await processor(db, source).handle_batch(jobs)
    assert [r.status for r in results] == ["processed"] * 3  # type: ignore[union-attr]
    assert source.batches == [[job.id for job in jobs]]


async def test_a_job_that_names_no_message_goes_to_its_sources_ingest_not_the_ledger(db: Database) -> None:
    class Ingesting(FakeSource):
        def __init__(self) -> None:
            super().__init__()
            self.ingested: list[str] = []

        async def ingest(self, job: Job) -> Outcome:
            self.ingested.append(job.id)
            return Outcome("processed", "walked")

    source = Ingesting()
    registry = SourceRegistry()
    registry.register("google", source)
    registry.register("imap", source)
    walk = new_job(GooglePointer(account=ACCOUNT, email="a@example.com", history_id=7), tenant=TENANT)
    message = job_for(1)
    source.put(message, mime(1))
    proc = Processor(db, registry, processing_config(), "test-instance")
    results = await proc.handle_batch([walk, message])
    assert results[0] == Outcome("processed", "walked") and source.ingested == [walk.id]
    assert results[1].status == "processed"  # type: ignore[union-attr]
    assert await query(db, "SELECT identity FROM inbound_ledger") == [(message.identity(),)]

