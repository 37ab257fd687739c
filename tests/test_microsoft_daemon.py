"""Microsoft Graph through the daemon in this process: webhook, subscriptions, delta, fetch, status.

The daemon (``Daemon.run``) runs against the suite's Redis and PostgreSQL
and the loopback fakes of Azure AD (https) and Graph; Graph's calls to the
daemon (validation handshakes, notifications, lifecycle events) are real
HTTP requests from the fake's threads to the daemon's public listener.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
import redis
import trio

from inboundd import cli, config
from inboundd.daemon import Daemon
from inboundd.systemd import Notifier
from m365_bed import MAILBOX, GraphBed, mime
from waiting import eventually


@pytest.fixture
def bed(tmp_path: Path):
    graph_bed = GraphBed(tmp_path / "m365")
    yield graph_bed
    graph_bed.close()


class Running:
    def __init__(self, daemon: Daemon, bed: GraphBed, path: Path, pg_dsn: str, redis_url: str) -> None:
        self.daemon = daemon
        self.bed = bed
        self.path = path
        self.pg_dsn = pg_dsn
        self.redis_url = redis_url

    @property
    def url(self) -> str:
        return self.bed.public_url

    async def post(self, path: str, body: bytes | dict, **kw: Any) -> httpx.Response:
        content = json.dumps(body).encode() if isinstance(body, dict) else body
        return await trio.to_thread.run_sync(
            lambda: httpx.post(self.url + path, content=content, timeout=10, **kw))

    async def get(self, path: str) -> httpx.Response:
        return await trio.to_thread.run_sync(lambda: httpx.get(self.url + path, timeout=10))

    async def call(self, fn: Any, *args: Any) -> Any:
        """A blocking call of the fakes (they call the daemon back): in a thread."""
        return await trio.to_thread.run_sync(fn, *args)

    def rows(self, sql: str, *args: Any) -> list[tuple]:
        with psycopg.connect(self.pg_dsn) as conn:
            return conn.execute(sql, args).fetchall()

    def stored(self) -> list[tuple]:
        return self.rows("SELECT provider_message_id, folder, subject FROM inbound_messages ORDER BY id")

    def ledger(self) -> list[tuple]:
        return self.rows("SELECT identity, status, reason FROM inbound_ledger ORDER BY created_at")

    def stream_length(self) -> int:
        with redis.Redis.from_url(self.redis_url) as client:
            return client.xlen("{inboundd}:stream")

    def subscriptions(self) -> list[tuple]:
        return self.rows("SELECT account, folder, subscription_id, client_state FROM inbound_graph_subscriptions"
                         " ORDER BY account, folder")


@asynccontextmanager
async def running(bed: GraphBed, redis_url: str, pg_dsn: str, accounts: str | None = None,
                  **kw: Any) -> AsyncIterator[Running]:
    path = bed.directory / "inboundd.toml"
    path.write_text(bed.config(redis_url, pg_dsn, accounts, **kw))
    daemon = Daemon(config.load(path), str(path), Notifier(""))
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        try:
            yield Running(daemon, bed, path, pg_dsn, redis_url)
        finally:
            daemon.request_stop()


async def subscribed(run: Running, folders: int = 1, account: str = "support-m365") -> list[Any]:
    """Wait until Graph has the account's subscriptions and the first delta walks are done."""
    await eventually(lambda: len(run.subscriptions()) == folders, 20, "the subscriptions to be stored")
    renewer = run.daemon.components.runtimes["microsoft"].renewers()[account]
    await eventually(lambda: all(f.last_delta_at for f in renewer.folders.values()), 20, "the first delta walks")
    return [s for s in run.bed.graph.subscriptions.values()]


# --------------------------------------------------------------------------- handshake and notifications


async def test_start_subscribes_with_both_urls_validated_then_a_notification_is_stored(bed, redis_url, pg_dsn):
    old = bed.graph.add_message(MAILBOX, "Inbox", mime(0, "old"))
    async with running(bed, redis_url, pg_dsn) as run:
        (sub,) = await subscribed(run)
        # The fake validated both URLs with the handshake before answering 201.
        assert sub.notification_url == f"{run.url}/webhooks/microsoft"
        assert sub.lifecycle_url == f"{run.url}/webhooks/microsoft/lifecycle"
        assert sub.resource == f"users/{MAILBOX}/mailFolders('Inbox')/messages" and sub.immutable_ids
        assert len(sub.client_state) >= 32 and run.subscriptions()[0][3] == sub.client_state
        new = bed.graph.add_message(MAILBOX, "Inbox", mime(1))
        response = await run.call(bed.graph.notify, [new])
        assert response.status_code == 202 and response.content == b""
        await eventually(lambda: run.stored() == [(new, "Inbox", "hello 1")], 20, "the notified message stored")
        assert old not in [row[0] for row in run.stored()]  # start_from = "now": old mail is not imported


@pytest.mark.parametrize("route", ["/webhooks/microsoft", "/webhooks/microsoft/lifecycle"])
async def test_handshake_on_both_routes_echoes_the_decoded_token_as_plain_text(bed, redis_url, pg_dsn, route):
    async with running(bed, redis_url, pg_dsn, accounts="") as run:
        token = "Validation: Testing <b>client</b> & reachability"
        response = await run.post(f"{route}?validationToken={quote(token)}", b"",
                                  headers={"Content-Type": "text/plain; charset=utf-8"})
        encoded = await run.post(route + "?validationToken=Validation%3A%20a%2Bb%20%3Cb%3E", b"{not json")
    assert response.status_code == 200 and response.text == token
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert encoded.status_code == 200 and encoded.text == "Validation: a+b <b>"


async def test_a_batch_of_50_across_two_subscriptions_is_enqueued_and_stored(bed, redis_url, pg_dsn):
    async with running(bed, redis_url, pg_dsn, bed.account(folders=["Inbox", "Archive"])) as run:
        inbox, archive = sorted(await subscribed(run, 2), key=lambda s: s.resource)
        items = []
        for n in range(50):
            sub, folder = (inbox, "Inbox") if n % 2 else (archive, "Archive")
            message = bed.graph.add_message(MAILBOX, folder, mime(n))
            items.append(bed.graph.notification_item(sub, message))
        response = await run.call(bed.graph.post, inbox.notification_url, items)
        assert response.status_code == 202
        await eventually(lambda: len(run.stored()) == 50, 30, "50 messages stored")
        folders = sorted(row[1] for row in run.stored())
        assert folders == ["Archive"] * 25 + ["Inbox"] * 25


async def test_forged_unknown_and_foreign_tenant_items_are_refused_and_nothing_is_enqueued(bed, redis_url, pg_dsn):
    async with running(bed, redis_url, pg_dsn) as run:
        (sub,) = await subscribed(run)
        message = bed.graph.add_message(MAILBOX, "Inbox", mime(1))
        before = run.stream_length()
        forged = [
            bed.graph.notification_item(sub, message, clientState="guessed"),
            bed.graph.notification_item(sub, message, subscriptionId="00000000-0000-0000-0000-000000000000"),
            bed.graph.notification_item(sub, message, tenantId="11111111-2222-3333-4444-555555555555"),
        ]
        for item in forged:
            response = await run.call(bed.graph.post, sub.notification_url, [item])
            assert response.status_code == 202  # Graph must not retry forgeries
        assert run.stream_length() == before and run.ledger() == []
        metrics = (await run.get("/metrics")).text
        for reason in ("bad_client_state", "unknown_subscription", "wrong_tenant"):
            assert f'outcome="{reason}"' in metrics
        assert sub.client_state not in (run.bed.directory / "inboundd.toml").read_text()


@pytest.mark.parametrize("body, says", [
    (b"not json", "body is not JSON"),
    (b'{"value": 3}', "not a notification collection"),
    (b"x" * (1024 * 1024 + 1), "body larger than 1048576 bytes"),
])
async def test_a_malformed_body_is_a_400_with_the_reason(bed, redis_url, pg_dsn, body, says):
    async with running(bed, redis_url, pg_dsn, accounts="") as run:
        response = await run.post("/webhooks/microsoft", body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and says in response.json()["error"]


async def test_redis_down_is_503_and_the_retried_post_is_accepted_once_redis_is_back(bed, make_redis, pg_dsn):
    server = make_redis(persist=True)
    async with running(bed, server.url, pg_dsn) as run:
        (sub,) = await subscribed(run)
        message = bed.graph.add_message(MAILBOX, "Inbox", mime(7))
        await run.call(server.stop)
        refused = await run.call(bed.graph.notify, [message])
        assert refused.status_code == 503 and refused.headers["retry-after"]
        await run.call(server.start)
        accepted = await run.call(bed.graph.notify, [message])
        assert accepted.status_code == 202
        await eventually(lambda: [r[0] for r in run.stored()] == [message], 30, "the retried message stored")


# --------------------------------------------------------------------------- lifecycle events


async def test_missed_reconciles_by_delta_and_stores_what_had_no_notification(bed, redis_url, pg_dsn):
    async with running(bed, redis_url, pg_dsn) as run:
        (sub,) = await subscribed(run)
        silent = bed.graph.add_message(MAILBOX, "Inbox", mime(3, "never notified"))
        response = await run.call(bed.graph.lifecycle, sub, "missed")
        assert response.status_code == 202
        await eventually(lambda: [r[0] for r in run.stored()] == [silent], 20, "the missed message stored")


async def test_subscription_removed_creates_a_new_subscription_and_resyncs(bed, redis_url, pg_dsn):
    async with running(bed, redis_url, pg_dsn) as run:
        (sub,) = await subscribed(run)
        bed.graph.drop_subscription(sub.id)
        lost = bed.graph.add_message(MAILBOX, "Inbox", mime(4, "while removed"))
        response = await run.call(bed.graph.lifecycle, sub, "subscriptionRemoved")
        assert response.status_code == 202
        await eventually(lambda: [row[2] for row in run.subscriptions()] == list(bed.graph.subscriptions)
                         and sub.id not in bed.graph.subscriptions, 20, "a new subscription, stored")
        (new,) = bed.graph.subscriptions.values()
        assert new.client_state != sub.client_state
        await eventually(lambda: [r[0] for r in run.stored()] == [lost], 20, "the message of the gap stored")
        # The old subscription's notifications are no longer accepted; the new one's are.
        stale = await run.call(bed.graph.post, sub.notification_url, [bed.graph.notification_item(sub, lost)])
        assert stale.status_code == 202 and run.stream_length() <= 1


async def test_reauthorization_required_renews_now(bed, redis_url, pg_dsn):
    async with running(bed, redis_url, pg_dsn) as run:
        (sub,) = await subscribed(run)
        assert bed.graph.calls_to("renew") == []
        response = await run.call(bed.graph.lifecycle, sub, "reauthorizationRequired")
        assert response.status_code == 202
        await eventually(lambda: len(bed.graph.calls_to("renew")) == 1, 20, "a PATCH of the subscription")
        assert bed.graph.subscriptions[sub.id] is sub


# --------------------------------------------------------------------------- consume time


async def test_value_404_is_skipped_as_source_deleted(bed, redis_url, pg_dsn):
    async with running(bed, redis_url, pg_dsn) as run:
        (sub,) = await subscribed(run)
        message = bed.graph.add_message(MAILBOX, "Inbox", mime(5))
        bed.graph.delete_message(message)
        assert (await run.call(bed.graph.notify, [message], sub)).status_code == 202
        await eventually(lambda: run.ledger() == [(f"graph:{message}", "skipped", "source_deleted")], 20,
                         "the skip recorded")


async def test_throttled_fetch_waits_the_retry_after_graph_asked_for(bed, redis_url, pg_dsn):
    async with running(bed, redis_url, pg_dsn) as run:
        await subscribed(run)
        message = bed.graph.add_message(MAILBOX, "Inbox", mime(6))
        bed.graph.fail("value", 429, {"error": {"code": "ApplicationThrottled", "message": "slow down"}},
                       {"Retry-After": "2"})
        await run.call(bed.graph.notify, [message])
        await eventually(lambda: len(run.stored()) == 1, 30, "the message stored after the wait")
        first, second = [time_of(call) for call in bed.graph.calls_to("value")]
        assert second - first >= 2.0


def time_of(call: tuple) -> float:
    return call[4]


async def test_an_oversize_message_is_skipped_without_reading_it_all(bed, redis_url, pg_dsn):
    async with running(bed, redis_url, pg_dsn, extra='[processing]\nmax_message_size = "1MiB"\n') as run:
        await subscribed(run)
        total = 48 * 1024 * 1024
        message = bed.graph.add_message(MAILBOX, "Inbox", b"Subject: big\r\n\r\n" + b"x" * total)
        bed.graph.chunked.add(message)
        await run.call(bed.graph.notify, [message])
        await eventually(lambda: run.ledger() == [(f"graph:{message}", "skipped", "oversize")], 30, "the skip")
        await eventually(lambda: message in bed.graph.bytes_sent, 10, "the fake to stop sending")
        assert bed.graph.bytes_sent[message] < total // 2


async def test_post_action_mark_read_after_commit(bed, redis_url, pg_dsn):
    async with running(bed, redis_url, pg_dsn, bed.account(post_action="mark_read")) as run:
        await subscribed(run)
        message = bed.graph.add_message(MAILBOX, "Inbox", mime(8))
        await run.call(bed.graph.notify, [message])
        await eventually(lambda: bed.graph.messages[message].is_read, 20, "the message marked read")
        assert len(run.stored()) == 1


# --------------------------------------------------------------------------- operations


async def test_status_and_metrics_show_each_subscription(bed, redis_url, pg_dsn, capsys):
    async with running(bed, redis_url, pg_dsn) as run:
        (sub,) = await subscribed(run)
        code = await trio.to_thread.run_sync(cli.main, ["-c", str(run.path), "status", "--json"])
        status = json.loads(capsys.readouterr().out)
        assert code == cli.EXIT_OK, status["health"]
        (part,) = status["microsoft"]
        assert (part["account"], part["folder"], part["state"], part["subscription_id"]) == \
            ("support-m365", "Inbox", "active", sub.id)
        assert 69 * 3600 < part["expires_in"] <= 70 * 3600 and part["renew_failures"] == 0
        assert "client_state" not in json.dumps(status) and sub.client_state not in json.dumps(status)
        await trio.to_thread.run_sync(cli.main, ["-c", str(run.path), "status"])
        assert "SUBSCRIPTIONS (Microsoft Graph)" in capsys.readouterr().out
        metrics = (await run.get("/metrics")).text
        line = next(line for line in metrics.splitlines()
                    if line.startswith('inboundd_microsoft_subscription_expiry_seconds{account="support-m365"'))
        assert 69 * 3600 < float(line.split()[-1]) <= 70 * 3600


async def test_sighup_removal_deletes_the_subscription_at_graph(bed, redis_url, pg_dsn):
    async with running(bed, redis_url, pg_dsn) as run:
        (sub,) = await subscribed(run)
        run.path.write_text(bed.config(redis_url, pg_dsn, accounts=""))
        await run.daemon.reload()
        await eventually(lambda: bed.graph.subscriptions == {}, 20, "the subscription deleted at Graph")
        assert bed.graph.deleted_subscriptions == [sub.id] and run.subscriptions() == []


async def test_a_restart_reuses_the_stored_subscription(bed, redis_url, pg_dsn):
    async with running(bed, redis_url, pg_dsn) as run:
        (sub,) = await subscribed(run)
    async with running(bed, redis_url, pg_dsn) as run:
        await eventually(lambda: run.daemon.components.runtimes["microsoft"].renewers()["support-m365"]
                         .folders["Inbox"].last_delta_at, 20, "the catch-up walk")
        assert list(bed.graph.subscriptions) == [sub.id] and len(bed.graph.calls_to("create")) == 1
        message = bed.graph.add_message(MAILBOX, "Inbox", mime(9))
        assert (await run.call(bed.graph.notify, [message])).status_code == 202
        await eventually(lambda: len(run.stored()) == 1, 20, "stored through the reused subscription")


async def test_inboundctl_unsubscribe_refuses_while_a_daemon_owns_the_account_then_deletes(
        bed, redis_url, pg_dsn, capsys):
    async with running(bed, redis_url, pg_dsn) as run:
        (sub,) = await subscribed(run)
        code = await trio.to_thread.run_sync(cli.main, ["-c", str(run.path), "unsubscribe", "support-m365"])
        err = capsys.readouterr().err
        assert code == cli.EXIT_FAILED and "owned by a running daemon" in err
        assert list(bed.graph.subscriptions) == [sub.id]
    # The daemon stopped (its lease released): the account can be retired.
    code = await trio.to_thread.run_sync(cli.main, ["-c", str(run.path), "unsubscribe", "support-m365"])
    out = capsys.readouterr().out
    assert code == cli.EXIT_OK and out == f"Inbox subscription {sub.id}: deleted\n"
    assert bed.graph.subscriptions == {} and run.subscriptions() == []
    code = await trio.to_thread.run_sync(cli.main, ["-c", str(run.path), "unsubscribe", "support-m365"])
    assert code == cli.EXIT_OK and capsys.readouterr().out == "account 'support-m365': nothing registered\n"


async def test_inboundctl_unsubscribe_needs_a_configured_microsoft_account(bed, redis_url, pg_dsn, capsys):
    path = bed.directory / "inboundd.toml"
    path.write_text(bed.config(redis_url, pg_dsn))
    code = await trio.to_thread.run_sync(cli.main, ["-c", str(path), "unsubscribe", "nobody"])
    assert code == cli.EXIT_USAGE and "no account 'nobody'" in capsys.readouterr().err
