"""Processor.handle_batch against real PostgreSQL: the outcomes and rows of handle(), with two transactions a batch.

Every test states what one-by-one processing gives and checks that a batch
gives the same: the same outcome per job, the same stored rows, the same
ledger — while a poison message, a claim lost mid-batch or a cancel touch
only the jobs they concern.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from inboundd import metrics
from inboundd.config import PostgresConfig
from inboundd.jobs import Job
from inboundd.outcomes import DependencyDown, Outcome, TransientError
from inboundd.source import SourceUnavailable
from inboundd.store import ledger
from inboundd.store.db import Database
from inboundd.store.migrate import migrate
from fakes import FakeSource, job_for, mime, processor


def key_of(job: Job) -> ledger.Key:
    return ledger.Key(job.tenant, job.account, job.identity())


class CountingDatabase(Database):
    """The real pool, counting the transactions run through it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transactions = 0

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.transactions += 1
        return await super().run(fn, *args, **kwargs)


@pytest.fixture
async def db(pg_dsn: str):
    database = CountingDatabase(PostgresConfig(dsn=pg_dsn, pool_min=1, pool_max=8))
    await database.open()
    await database.run(migrate)
    try:
        yield database
    finally:
        await database.close()


async def query(db: Database, sql: str, *args: Any) -> list[tuple]:
    return await db.run(lambda conn: conn.execute(sql, args).fetchall())


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


async def test_a_batch_gives_every_job_the_outcome_and_rows_one_by_one_processing_gives(db: CountingDatabase) -> None:
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
    before = db.transactions
    in_batch = await together.handle_batch(jobs_batch)
    transactions = db.transactions - before
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


async def test_twenty_new_messages_take_two_transactions(db: CountingDatabase) -> None:
    source = FakeSource()
    jobs = [job_for(uid) for uid in range(20)]
    for job in jobs:
        source.put(job, mime(job.pointer.uid, attachment=b"%PDF" if job.pointer.uid % 3 == 0 else None))
    before = db.transactions
    results = await processor(db, source).handle_batch(jobs)
    assert [r.status for r in results] == ["processed"] * 20  # type: ignore[union-attr]
    assert db.transactions - before == 2
    rows = await query(db, "SELECT count(*), count(DISTINCT message_id) FROM inbound_ledger WHERE status = 'processed'")
    assert rows == [(20, 20)]
    assert (await query(db, "SELECT count(*) FROM inbound_attachments"))[0][0] == 7


async def test_a_poison_message_fails_alone_and_its_neighbours_are_stored(db: CountingDatabase) -> None:
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


async def test_a_claim_taken_over_mid_batch_is_not_written_and_the_rest_are(db: CountingDatabase) -> None:
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
        db: CountingDatabase) -> None:
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


async def test_busy_identities_get_handles_verdict(db: CountingDatabase) -> None:
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


async def test_a_source_with_fetch_many_is_asked_once_for_the_batch(db: CountingDatabase) -> None:
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
