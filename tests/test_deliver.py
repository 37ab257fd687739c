"""Deliveries against real PostgreSQL and a loopback receiver: the outbox, the deliverer, the three kinds.

The receiver (``receiver.py``) verifies webhook signatures with the
reference ``standardwebhooks`` package, and enforces Rails' relay ingress
contract for ``action_mailbox``. Messages are stored through the real store
transaction (``deliver_helpers.store_messages``).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import psycopg
import pytest
import trio
from standardwebhooks import Webhook

from inboundd import metrics
from inboundd.config import Config, ProcessingConfig
from inboundd.config_schema import DeliverConfig
from inboundd.deliver import worker as worker_mod
from inboundd.deliver.deliverer import Deliverer
from inboundd.deliver.targets import Router, Target
from inboundd.jobs import ImapPointer, new_job
from inboundd.outcomes import Outcome
from inboundd.processing import Processor
from inboundd.source import FetchedMessage, SourceRegistry
from inboundd.store import outbox
from inboundd.store.db import Database
from deliver_helpers import SECRET, mailbox_target, raw_message, store_messages, webhook_target
from receiver import RELAY_PATH, Answer, Received, Receiver, rails_relay
from waiting import eventually

FAST = {"backoff_base": 0.05, "backoff_cap": 0.2, "timeout": 5.0}


@pytest.fixture
def receiver() -> Any:
    server = Receiver().start()
    try:
        yield server
    finally:
        server.close()


@asynccontextmanager
async def running(db: Database, targets: list[Target], instance: str = "test") -> AsyncIterator[Deliverer]:
    deliverer = Deliverer(db, targets, instance)
    async with trio.open_nursery() as nursery:
        await nursery.start(deliverer.run)
        yield deliverer
        nursery.cancel_scope.cancel()


async def rows(db: Database, target: str | None = None) -> list[dict[str, Any]]:
    def query(conn: Any) -> list[dict[str, Any]]:
        cur = conn.execute("SELECT * FROM inbound_deliveries WHERE %s::text IS NULL OR target = %s ORDER BY id",
                           (target, target))
        names = [c.name for c in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    return await db.run(query)


async def statuses(db: Database) -> list[str]:
    return [row["status"] for row in await rows(db)]


def verified(request: Received) -> dict[str, Any]:
    """The JSON body, verified as a receiver would (raises if the signature is wrong)."""
    return Webhook(SECRET).verify(request.body, request.headers)


# --------------------------------------------------------------------------- the outbox in the store transaction


async def test_the_store_transaction_owes_one_row_per_matching_target(db: Database, receiver: Receiver) -> None:
    from inboundd.config_schema import DeliverMatch

    hook = webhook_target(receiver.url)
    only_sales = webhook_target(receiver.url, target_id="sales-only", match=DeliverMatch(accounts=["sales"]))
    rails = mailbox_target(receiver.url, "pw")
    raw = raw_message(1)
    [message_row_id] = await db.run(lambda conn: store_messages(conn, [raw], [hook, only_sales, rails]))
    found = await rows(db)
    assert [(r["message_id"], r["target"], r["kind"], r["status"], r["attempts"]) for r in found] == [
        (message_row_id, "hook", "webhook", "pending", 0), (message_row_id, "rails", "action_mailbox", "pending", 0)]
    assert found[0]["raw"] is None and bytes(found[1]["raw"]) == raw  # only the relay needs the raw MIME
    assert found[0]["delivery_id"].startswith("msg_") and found[0]["delivery_id"] != found[1]["delivery_id"]
    # With keep_raw the message keeps the raw MIME, and the row does not copy it.
    await db.run(lambda conn: store_messages(conn, [raw_message(2)], [rails], keep_raw=True))
    assert (await rows(db, "rails"))[-1]["raw"] is None


async def test_a_message_not_stored_owes_nothing(db: Database) -> None:
    """A rolled-back store transaction (here: the ledger claim was lost) leaves no outbox row."""
    hook = webhook_target("http://127.0.0.1:9/")

    def lose_claim_then_store(conn: Any) -> None:
        with conn.transaction():
            store_messages(conn, [raw_message(3)], [hook])
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await db.run(lose_claim_then_store)
    assert await rows(db) == []


async def test_concurrent_claims_never_share_a_row(db: Database, pg_dsn: str) -> None:
    hook = webhook_target("http://127.0.0.1:9/")
    await db.run(lambda conn: store_messages(conn, [raw_message(n) for n in range(10)], [hook]))
    with psycopg.connect(pg_dsn) as first, psycopg.connect(pg_dsn) as second:
        mine = outbox.claim(first, "hook", "a:1", limit=6, lease=60)  # its transaction stays open
        theirs = outbox.claim(second, "hook", "b:1", limit=6, lease=60)
        assert [r.id for r in mine] == sorted(r.id for r in mine) and len(mine) == 6
        assert len(theirs) == 4 and not {r.id for r in mine} & {r.id for r in theirs}
        first.commit()
        second.commit()
        # A record by anyone but the lease owner changes nothing.
        assert outbox.record(first, [outbox.Result(mine[0].id, "b:1", "delivered")]) == 0
        assert outbox.record(first, [outbox.Result(mine[0].id, "a:1", "delivered")]) == 1
        first.commit()
        assert outbox.release_owned(second, "b") == 4  # a restart of instance "b" takes its rows back
        second.commit()
    assert (await statuses(db)).count("delivered") == 1


# --------------------------------------------------------------------------- webhook


async def test_webhooks_are_signed_per_standard_webhooks_and_delivered_once(db: Database, receiver: Receiver) -> None:
    hook = webhook_target(receiver.url + "/inbound", **FAST)
    ids = await db.run(lambda conn: store_messages(conn, [raw_message(n, attachment=b"%PDF" * n) for n in (1, 2, 3)],
                                                   [hook]))
    before = metrics.REGISTRY.get_sample_value("inboundd_deliveries_delivered_total", {"target": "hook"}) or 0
    async with running(db, [hook]):
        await eventually(lambda: statuses(db), 10, what="rows recorded")
        await eventually(lambda: statuses_are(db, ["delivered"] * 3), 15, what="three delivered")
    received = receiver.received()
    assert len(received) == 3 and {r.path for r in received} == {"/inbound"}
    bodies = sorted((verified(r) for r in received), key=lambda body: body["data"]["id"])
    assert [body["data"]["id"] for body in bodies] == ids
    assert [r["delivery_id"] for r in await rows(db)] == sorted((r.headers["webhook-id"] for r in received),
                                                                 key=[r["delivery_id"] for r in await rows(db)].index)
    attachment = bodies[1]["data"]["attachments"][0]
    assert (attachment["filename"], attachment["content_omitted"]) == ("a.pdf", False)
    assert metrics.REGISTRY.get_sample_value("inboundd_deliveries_delivered_total", {"target": "hook"}) == before + 3


async def statuses_are(db: Database, expected: list[str]) -> bool:
    return await statuses(db) == expected


async def test_a_receiver_that_fails_three_times_then_accepts_gets_it_once_with_one_id(
        db: Database, receiver: Receiver) -> None:
    answers = iter([Answer(500, body=b"db down"), Answer(503, (("retry-after", "0"),)), Answer(500), Answer(204)])
    receiver.answer = lambda request: next(answers)
    hook = webhook_target(receiver.url, **FAST)
    await db.run(lambda conn: store_messages(conn, [raw_message(4)], [hook]))
    async with running(db, [hook]):
        await eventually(lambda: statuses_are(db, ["delivered"]), 20, what="delivered after three failures")
    received = receiver.received()
    assert len(received) == 4
    assert {r.headers["webhook-id"] for r in received} == {(await rows(db))[0]["delivery_id"]}
    for request in received:
        verified(request)  # every attempt signed afresh, all valid
    [row] = await rows(db)
    assert (row["attempts"], row["last_status"], row["lease_owner"]) == (4, 204, None)


async def test_a_4xx_is_dead_at_once_with_status_and_excerpt(db: Database, receiver: Receiver) -> None:
    receiver.answer = lambda request: Answer(422, body=b'{"error": "unknown mailbox"}')
    hook = webhook_target(receiver.url, **FAST)
    await db.run(lambda conn: store_messages(conn, [raw_message(5)], [hook]))
    async with running(db, [hook]):
        await eventually(lambda: statuses_are(db, ["dead"]), 10, what="dead")
    [row] = await rows(db)
    assert (row["attempts"], row["last_status"]) == (1, 422)
    assert row["last_error"] == 'HTTP 422: {"error": "unknown mailbox"}'
    assert len(receiver.received()) == 1


async def test_retries_stop_at_max_attempts(db: Database, receiver: Receiver) -> None:
    receiver.answer = lambda request: Answer(500)
    hook = webhook_target(receiver.url, max_attempts=2, **FAST)
    await db.run(lambda conn: store_messages(conn, [raw_message(6)], [hook]))
    async with running(db, [hook]):
        await eventually(lambda: statuses_are(db, ["dead"]), 10, what="dead after two attempts")
    [row] = await rows(db)
    assert row["attempts"] == 2 and "gave up after 2 attempts" in row["last_error"]


async def test_a_receiver_down_for_a_while_gets_the_backlog_oldest_first(db: Database, receiver: Receiver) -> None:
    receiver.stop()  # connection refused
    hook = webhook_target(receiver.url, concurrency=1, **FAST)
    await db.run(lambda conn: store_messages(conn, [raw_message(n) for n in range(8)], [hook]))
    async with running(db, [hook]) as deliverer:
        worker = deliverer.workers["hook"]
        await eventually(lambda: worker.gate.failures >= 3, 15, what="the target paused and probed")
        assert worker.gate.last_error.startswith("cannot connect")
        attempted = sum(row["attempts"] for row in await rows(db))
        assert attempted <= worker.gate.failures + 1  # one request per pause, not one per delivery
        receiver.start()  # the same port again
        await eventually(lambda: statuses_are(db, ["delivered"] * 8), 20, what="the backlog delivered")
    order = [r.headers["webhook-id"] for r in receiver.received()]
    assert order == [row["delivery_id"] for row in await rows(db)]  # oldest first


async def test_a_stored_message_is_sent_at_once_by_notify(db: Database, receiver: Receiver, monkeypatch) -> None:
    monkeypatch.setattr(worker_mod, "POLL_INTERVAL", 300.0)  # only the NOTIFY can wake the worker in time
    hook = webhook_target(receiver.url, **FAST)
    async with running(db, [hook]) as deliverer:
        await eventually(lambda: deliverer.listening, 10, what="the deliverer listening")
        worker = deliverer.workers["hook"]
        # The first (empty) claim round ran and the worker waits: only the NOTIFY can find the row now.
        await eventually(lambda: worker.claim_rounds >= 1, 10, what="the worker's first claim round")
        rounds = worker.claim_rounds
        await db.run(lambda conn: store_messages(conn, [raw_message(7)], [hook]))
        with trio.fail_after(5):
            await eventually(lambda: statuses_are(db, ["delivered"]), 5, what="delivered on NOTIFY")
        assert worker.claim_rounds > rounds  # a new round, woken by the NOTIFY (the timer is 300 s away)


async def test_the_timer_finds_rows_no_notify_announced(db: Database, receiver: Receiver, monkeypatch) -> None:
    monkeypatch.setattr(worker_mod, "POLL_INTERVAL", 0.3)
    hook = webhook_target(receiver.url, **FAST)
    [message_row_id] = await db.run(lambda conn: store_messages(conn, [raw_message(8)], []))
    async with running(db, [hook]) as deliverer:
        worker = deliverer.workers["hook"]
        await eventually(lambda: worker.claim_rounds >= 1, 10, what="the worker's first claim round")
        await db.run(lambda conn: conn.execute(  # a row written without NOTIFY
            "INSERT INTO inbound_deliveries (message_id, target, kind) VALUES (%s, 'hook', 'webhook')",
            (message_row_id,)))
        await eventually(lambda: statuses_are(db, ["delivered"]), 5, what="delivered by the timer")


async def test_drain_finishes_requests_in_flight_and_claims_nothing_more(db: Database, receiver: Receiver) -> None:
    receiver.hold()
    hook = webhook_target(receiver.url, concurrency=2, **FAST)
    await db.run(lambda conn: store_messages(conn, [raw_message(n) for n in range(6)], [hook]))
    async with running(db, [hook]) as deliverer:
        await eventually(lambda: receiver.waiting >= 2, 10, what="two requests held at the receiver")
        deliverer.drain()
        receiver.release()
        with trio.fail_after(10):
            await deliverer.wait_idle()
        found = await rows(db)
        assert [r["status"] for r in found].count("delivered") == 2
        assert all(r["lease_owner"] is None for r in found)  # claimed but unsent rows were handed back
        assert [r["attempts"] for r in found if r["status"] == "pending"] == [0] * 4
        deliverer.resume()
        await eventually(lambda: statuses_are(db, ["delivered"] * 6), 10, what="the rest after resume")


async def test_reload_starts_retires_and_restarts_targets(db: Database, receiver: Receiver) -> None:
    first = webhook_target(receiver.url, target_id="first", **FAST)
    second = webhook_target(receiver.url, target_id="second", **FAST)
    async with running(db, [first]) as deliverer:
        await deliverer.apply_config([second])
        assert list(deliverer.workers) == ["second"]
        await db.run(lambda conn: store_messages(conn, [raw_message(9)], [first, second]))
        await eventually(lambda: statuses_are(db, ["pending", "delivered"]), 10, what="only the running target")
        changed = webhook_target(receiver.url + "/v2", target_id="second", **FAST)
        await deliverer.apply_config([first, changed])
        await eventually(lambda: statuses_are(db, ["delivered", "delivered"]), 10, what="first delivered too")
        await db.run(lambda conn: store_messages(conn, [raw_message(10)], [changed]))
        await eventually(lambda: any(r.path == "/v2" for r in receiver.received()), 10, what="the changed URL used")


# --------------------------------------------------------------------------- action mailbox


async def test_action_mailbox_relay_gets_the_exact_raw_bytes(db: Database, receiver: Receiver) -> None:
    accepted: list[bytes] = []
    receiver.answer = rails_relay("ingress-pw", accepted)
    rails = mailbox_target(receiver.url + RELAY_PATH, "ingress-pw", **FAST)
    raws = [raw_message(11, attachment=b"\x00\x01binary"), raw_message(12).replace(b"\r\n", b"\n")]
    await db.run(lambda conn: store_messages(conn, raws, [rails]))
    async with running(db, [rails]):
        await eventually(lambda: statuses_are(db, ["delivered", "delivered"]), 10, what="relayed")
    assert sorted(accepted) == sorted(raws)
    assert all(row["raw"] is None for row in await rows(db))  # dropped once delivered
    assert {r.headers["content-type"] for r in receiver.received()} == {"message/rfc822"}


async def test_action_mailbox_with_a_wrong_password_is_dead_and_keeps_the_raw(db: Database, receiver: Receiver) -> None:
    receiver.answer = rails_relay("right", [])
    rails = mailbox_target(receiver.url + RELAY_PATH, "wrong", **FAST)
    await db.run(lambda conn: store_messages(conn, [raw_message(13)], [rails]))
    async with running(db, [rails]):
        await eventually(lambda: statuses_are(db, ["dead"]), 10, what="refused")
    [row] = await rows(db)
    assert row["last_status"] == 401 and "Access denied" in row["last_error"]
    assert bytes(row["raw"]) == raw_message(13)  # kept for `inboundctl redeliver` once the password is fixed


# --------------------------------------------------------------------------- python


class _Source:
    def __init__(self, raw: dict[str, bytes]) -> None:
        self.raw = raw

    async def fetch(self, job, max_size):
        return FetchedMessage(raw=self.raw[job.identity()], provider_message_id="p", folder="INBOX")

    async def after_commit(self, job, outcome: Outcome) -> None:
        pass


def app_handler(conn: Any, inbound: Any) -> None:
    """An application's handler: a row in its own table, in the store transaction."""
    if "explode" in inbound.message.subject:
        conn.execute("INSERT INTO app_tickets (subject) VALUES ('half-written')")
        raise ValueError("the application refused it")
    conn.execute("INSERT INTO app_tickets (message_row_id, subject, sender) VALUES (%s, %s, %s)",
                 (inbound.message_row_id, inbound.message.subject, inbound.message.from_.address))


async def test_a_python_handler_commits_with_the_message_or_rolls_everything_back(db: Database) -> None:
    await db.run(lambda conn: conn.execute(
        "CREATE TABLE app_tickets (message_row_id bigint, subject text, sender text)"))
    handler = Target(DeliverConfig(id="app", kind="python", handler="test_deliver:app_handler"), handler=app_handler)
    hook = webhook_target("http://127.0.0.1:9/")
    good = new_job(ImapPointer(account="support", folder="INBOX", uidvalidity=1, uid=1), tenant="t1")
    bad = new_job(ImapPointer(account="support", folder="INBOX", uidvalidity=1, uid=2), tenant="t1")
    sources = SourceRegistry()
    sources.register("imap", _Source({good.identity(): raw_message(20),
                                      bad.identity(): raw_message(21, subject="please explode")}))
    processor = Processor(db, sources, Config(processing=ProcessingConfig(dedupe_message_id=False)), "t",
                          router=Router([handler, hook]))
    outcome = await processor.handle(good)
    assert await db.run(lambda conn: conn.execute("SELECT message_row_id, subject, sender FROM app_tickets")
                        .fetchall()) == [(outcome.message_row_id, "order 20", "c20@example.com")]
    with pytest.raises(Exception, match="deliver target 'app': handler raised ValueError: the application refused it"):
        await processor.handle(bad)
    # Nothing of the failed job stayed: no message, no ticket, no outbox row; the ledger says failed.
    assert await db.run(lambda conn: conn.execute("SELECT count(*) FROM app_tickets").fetchone()[0]) == 1
    assert await db.run(lambda conn: conn.execute("SELECT count(*) FROM inbound_messages").fetchone()[0]) == 1
    assert [r["message_id"] for r in await rows(db)] == [outcome.message_row_id]
    status = await db.run(lambda conn: conn.execute(
        "SELECT status, last_error FROM inbound_ledger WHERE identity = %s", (bad.identity(),)).fetchone())
    assert status[0] == "failed" and "application refused it" in status[1]


async def batch_processor(db: Database, raws: list[bytes]) -> tuple[Processor, list[Any]]:
    """A Processor owing each stored message a webhook row and the app handler, and one job per raw message."""
    await db.run(lambda conn: conn.execute(
        "CREATE TABLE app_tickets (message_row_id bigint, subject text, sender text)"))
    handler = Target(DeliverConfig(id="app", kind="python", handler="test_deliver:app_handler"), handler=app_handler)
    jobs = [new_job(ImapPointer(account="support", folder="INBOX", uidvalidity=1, uid=uid), tenant="t1")
            for uid in range(1, len(raws) + 1)]
    sources = SourceRegistry()
    sources.register("imap", _Source({job.identity(): raw for job, raw in zip(jobs, raws)}))
    processor = Processor(db, sources, Config(processing=ProcessingConfig(dedupe_message_id=False)), "t",
                          router=Router([handler, webhook_target("http://127.0.0.1:9/")]))
    return processor, jobs


async def test_a_batch_owes_each_stored_message_its_deliveries_and_a_refusing_handler_fails_alone(
        db: Database) -> None:
    processor, jobs = await batch_processor(
        db, [raw_message(30), raw_message(31, subject="please explode"), raw_message(32)])
    fallbacks = metrics.batch_fallbacks._value.get()
    first, refused, third = await processor.handle_batch(jobs)
    assert (first.status, third.status) == ("processed", "processed")  # type: ignore[union-attr]
    assert "handler raised ValueError: the application refused it" in str(refused)
    assert metrics.batch_fallbacks._value.get() - fallbacks == 1  # the batch was redone one by one
    tickets = await db.run(lambda conn: conn.execute(
        "SELECT message_row_id, subject FROM app_tickets ORDER BY subject").fetchall())
    assert tickets == [(first.message_row_id, "order 30"), (third.message_row_id, "order 32")]  # type: ignore
    assert sorted(r["message_id"] for r in await rows(db)) == sorted(
        [first.message_row_id, third.message_row_id])  # type: ignore[union-attr]


async def test_a_batch_of_good_messages_writes_their_outbox_rows_and_runs_their_handlers_in_one_transaction(
        db: Database) -> None:
    processor, jobs = await batch_processor(db, [raw_message(40 + n) for n in range(4)])
    fallbacks = metrics.batch_fallbacks._value.get()
    outcomes = await processor.handle_batch(jobs)
    assert metrics.batch_fallbacks._value.get() == fallbacks
    ids = [o.message_row_id for o in outcomes]  # type: ignore[union-attr]
    assert await db.run(lambda conn: conn.execute(
        "SELECT message_row_id FROM app_tickets ORDER BY message_row_id").fetchall()) == [(i,) for i in sorted(ids)]
    assert sorted((r["message_id"], r["target"]) for r in await rows(db)) == sorted((i, "hook") for i in ids)
