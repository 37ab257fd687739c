"""One account's renewer against the fake Graph, the suite's Redis and PostgreSQL: subscriptions, delta, leases.

The renewer runs alone here (no HTTP server: the fake Graph skips the
validation handshake, which ``test_microsoft_daemon`` covers). Wall-clock
decisions (half-life, expiry) are driven by moving ``inboundd.clock.wall``
and the fake Graph's clock together; waits happen on trio's clock.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import trio

from inboundd import clock, jobs
from inboundd.config_schema import QueueConfig
from inboundd.ingress.cursors import DbCursorStore
from inboundd.ingress.httpclients import HttpClients
from inboundd.providers.microsoft.account import MicrosoftAccount
from inboundd.providers.microsoft.book import SubscriptionBook
from inboundd.providers.microsoft.lifecycle import LifecycleRequests
from inboundd.providers.microsoft.renewer import AccountRenewer, RenewerDeps
from inboundd.queue import Queue
from inboundd.redisio import RedisIO
from inboundd.store.db import Database
from m365_bed import MAILBOX, GraphBed, mime, pools
from waiting import eventually

HOUR = 3600.0


class WallClock:
    """``time.time`` plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def wall(monkeypatch) -> WallClock:
    fake = WallClock()
    monkeypatch.setattr(clock, "wall", fake)
    return fake


class Env:
    def __init__(self, bed: GraphBed, rio: RedisIO, db: Database, clients: HttpClients, redis_url: str,
                 pg_dsn: str) -> None:
        self.bed = bed
        self.rio = rio
        self.db = db
        self.redis_url = redis_url
        self.pg_dsn = pg_dsn
        self.clients = clients
        self.accounts: dict[str, MicrosoftAccount] = {}
        self.book = SubscriptionBook(db, lambda account: self.accounts[account].tenant_ids()
                                     if account in self.accounts else None)

    def account(self, account_id: str = "support-m365", **keys: Any) -> MicrosoftAccount:
        account = self.accounts[account_id] = self.bed.load_account(self.clients, account_id, **keys)
        return account

    def renewer(self, account: MicrosoftAccount, instance: str = "a", lease_ttl: float = 30.0) -> AccountRenewer:
        deps = RenewerDeps(
            db=self.db, rio=self.rio, queue=Queue(self.rio, QueueConfig()), cursors=DbCursorStore(self.db),
            book=self.book, requests=LifecycleRequests(self.rio, "inboundd"), key_prefix="inboundd",
            instance_id=instance, public_url=self.bed.public_url, lease_ttl=lease_ttl,
        )
        return AccountRenewer(account, deps)

    def enqueued(self) -> list[str]:
        with redis.Redis.from_url(self.redis_url) as client:
            return [jobs.decode(fields[b"job"]).pointer.message_id
                    for _, fields in client.xrange("{inboundd}:stream")]

    def rows(self) -> list[tuple]:
        with psycopg.connect(self.pg_dsn) as conn:
            return conn.execute("SELECT folder, subscription_id, extract(epoch FROM expires_at)::float8,"
                                " renew_failures FROM inbound_graph_subscriptions ORDER BY folder").fetchall()

    def cursor(self, folder: str = "Inbox") -> str | None:
        with psycopg.connect(self.pg_dsn) as conn:
            row = conn.execute("SELECT delta_link FROM inbound_cursors WHERE folder = %s", (folder,)).fetchone()
        return row[0] if row else None


@pytest.fixture
async def env(tmp_path: Path, redis_url: str, pg_dsn: str, wall: WallClock) -> AsyncIterator[Env]:
    bed = GraphBed(tmp_path / "m365", validate_urls=False)
    bed.graph.clock = wall
    try:
        async with pools(redis_url, pg_dsn) as (rio, db, clients):
            yield Env(bed, rio, db, clients, redis_url, pg_dsn)
    finally:
        bed.close()


async def started(nursery: trio.Nursery, renewer: AccountRenewer) -> trio.CancelScope:
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await renewer.run(task_status=task_status)

    await nursery.start(run)
    return scope


def walked(renewer: AccountRenewer) -> bool:
    return all(folder.last_delta_at for folder in renewer.folders.values())


# --------------------------------------------------------------------------- subscriptions


async def test_renewal_happens_at_half_life_not_before(env: Env, wall: WallClock, nursery):
    renewer = env.renewer(env.account(subscription_lifetime="70h"))
    await started(nursery, renewer)
    await eventually(lambda: env.rows() and walked(renewer), 20, "a subscription and a first walk")
    [(folder, sub_id, expires_at, _)] = env.rows()
    assert abs(expires_at - (wall() + 70 * HOUR)) < 60
    wall.offset = 35 * HOUR - 60  # a minute before half-life
    rounds = renewer.rounds
    renewer.wake()
    await eventually(lambda: renewer.rounds > rounds, 5, "a round")
    assert env.bed.graph.calls_to("renew") == []
    wall.offset = 35 * HOUR + 1
    renewer.wake()
    await eventually(lambda: env.bed.graph.calls_to("renew"), 10, "the PATCH at half-life")
    await eventually(lambda: env.rows()[0][2] > expires_at + 30 * HOUR, 10, "the new expiry stored")
    assert env.rows()[0][1] == sub_id and len(env.bed.graph.calls_to("create")) == 1


async def test_a_404_on_renewal_recreates_the_subscription_and_resyncs(env: Env, wall: WallClock, nursery):
    renewer = env.renewer(env.account())
    await started(nursery, renewer)
    await eventually(lambda: env.rows() and walked(renewer), 20, "a subscription and a first walk")
    [(_, old_id, _, _)] = env.rows()
    env.bed.graph.drop_subscription(old_id)  # Graph lost it
    lost = env.bed.graph.add_message(MAILBOX, "Inbox", mime(1, "during the gap"))
    wall.offset = 36 * HOUR
    renewer.wake()
    await eventually(lambda: env.rows()[0][1] != old_id, 10, "a new subscription stored")
    assert len(env.bed.graph.calls_to("create")) == 2 and list(env.bed.graph.subscriptions) == [env.rows()[0][1]]
    await eventually(lambda: env.enqueued() == [lost], 10, "the message of the gap enqueued by delta")


async def test_an_expired_subscription_is_recreated_and_resynced(env: Env, wall: WallClock, nursery):
    account = env.account()
    renewer = env.renewer(account)
    scope = await started(nursery, renewer)
    await eventually(lambda: env.rows() and walked(renewer), 20, "a subscription and a first walk")
    scope.cancel()
    await eventually(lambda: renewer.state == "stopped", 5, "the renewer stopped")
    [(_, old_id, _, _)] = env.rows()
    wall.offset = 80 * HOUR  # the daemon was down longer than the lifetime
    env.bed.graph.drop_subscription(old_id)
    missed = env.bed.graph.add_message(MAILBOX, "Inbox", mime(2, "while down"))
    again = env.renewer(account)
    await started(nursery, again)
    await eventually(lambda: env.rows()[0][1] != old_id and env.enqueued() == [missed], 20,
                     "a new subscription, and the missed message enqueued")
    assert env.bed.graph.calls_to("renew") == []  # an expired subscription is not PATCHed


async def test_a_restart_reuses_the_stored_subscription(env: Env, nursery):
    account = env.account()
    first = env.renewer(account)
    scope = await started(nursery, first)
    await eventually(lambda: env.rows() and walked(first), 20, "a subscription and a first walk")
    scope.cancel()
    await eventually(lambda: first.state == "stopped", 5, "the renewer stopped")
    second = env.renewer(account)
    await started(nursery, second)
    await eventually(lambda: walked(second), 20, "the catch-up walk")
    assert len(env.bed.graph.calls_to("create")) == 1 and env.bed.graph.calls_to("renew") == []
    assert second.status()[0].subscription_id == env.rows()[0][1]


async def test_a_folder_no_longer_configured_loses_its_subscription(env: Env, nursery):
    first = env.renewer(env.account(folders=["Inbox", "Archive"]))
    scope = await started(nursery, first)
    await eventually(lambda: len(env.rows()) == 2 and walked(first), 20, "two subscriptions")
    archive_id = env.rows()[0][1]
    scope.cancel()
    await eventually(lambda: first.state == "stopped", 5, "the renewer stopped")
    second = env.renewer(env.account(folders=["Inbox"]))
    await started(nursery, second)
    await eventually(lambda: [row[0] for row in env.rows()] == ["Inbox"], 20, "the Archive subscription gone")
    assert archive_id in env.bed.graph.deleted_subscriptions and archive_id not in env.bed.graph.subscriptions


# --------------------------------------------------------------------------- ownership


async def test_one_owner_per_account_across_daemons_and_takeover(env: Env, nursery):
    account = env.account()
    a = env.renewer(account, instance="daemon-a", lease_ttl=2.0)
    b = env.renewer(account, instance="daemon-b", lease_ttl=2.0)
    a_scope = await started(nursery, a)
    await eventually(lambda: a.state == "active" and walked(a), 20, "a owns the account")
    await started(nursery, b)
    await eventually(lambda: b.state == "standby", 5, "b stands by")
    assert len(env.bed.graph.calls_to("create")) == 1
    a_scope.cancel()  # a stops: it releases the lease, b takes over at once
    await eventually(lambda: b.state == "active" and walked(b), 20, "b owns the account")
    assert len(env.bed.graph.calls_to("create")) == 1  # b reuses the stored subscription
    new = env.bed.graph.add_message(MAILBOX, "Inbox", mime(3))
    b.folders["Inbox"].delta_due = float("-inf")
    b.wake()
    await eventually(lambda: env.enqueued() == [new], 10, "b's delta walk")


# --------------------------------------------------------------------------- delta


async def test_first_start_now_enqueues_nothing_old_then_only_new_mail(env: Env, nursery):
    for n in range(3):
        env.bed.graph.add_message(MAILBOX, "Inbox", mime(n, "old"))
    renewer = env.renewer(env.account())
    await started(nursery, renewer)
    await eventually(lambda: walked(renewer) and env.cursor(), 20, "the baseline stored")
    assert env.enqueued() == []
    new = env.bed.graph.add_message(MAILBOX, "Inbox", mime(9, "new"))
    renewer.folders["Inbox"].delta_due = float("-inf")
    renewer.wake()
    await eventually(lambda: env.enqueued() == [new], 10, "the new message")


@pytest.mark.parametrize("start_from, expect", [("all", [0, 1, 2, 3, 4]), ("last:2", [3, 4])])
async def test_first_start_all_or_last_n(env: Env, nursery, start_from, expect):
    ids = [env.bed.graph.add_message(MAILBOX, "Inbox", mime(n), received=time.time() - 100 + n) for n in range(5)]
    renewer = env.renewer(env.account(start_from=start_from))
    await started(nursery, renewer)
    await eventually(lambda: walked(renewer) and env.cursor(), 20, "the first walk")
    assert env.enqueued() == [ids[n] for n in expect]


async def test_a_dead_delta_token_is_a_bounded_resync_without_a_gap(env: Env, nursery):
    old = env.bed.graph.add_message(MAILBOX, "Inbox", mime(0, "long ago"), received=time.time() - 10 * 86400)
    renewer = env.renewer(env.account())
    await started(nursery, renewer)
    await eventually(lambda: walked(renewer) and env.cursor(), 20, "the baseline stored")
    dead = env.cursor()
    env.bed.graph.reset_delta_tokens()
    recent = env.bed.graph.add_message(MAILBOX, "Inbox", mime(1, "after the baseline"))
    renewer.folders["Inbox"].delta_due = float("-inf")
    renewer.wake()
    await eventually(lambda: env.cursor() != dead, 10, "a new cursor")
    assert env.enqueued() == [recent]  # the gap is covered, the old mail is not re-imported
    assert old not in env.enqueued()


# --------------------------------------------------------------------------- failures


async def test_a_wrong_secret_pauses_the_account_and_the_other_goes_on(env: Env, nursery):
    env.bed.aad.register_app("acme.onmicrosoft.com", "app-bad", "another secret")
    bad = env.renewer(env.account("bad-m365", client_id="app-bad"))
    good = env.renewer(env.account("good-m365", folders=["Archive"]))
    await started(nursery, bad)
    await started(nursery, good)
    await eventually(lambda: bad.state == "auth_failed", 20, "the wrong secret paused")
    (status,) = bad.status()
    assert "invalid_client" in status.last_error and status.retry_at > clock.wall() + 600
    await eventually(lambda: good.state == "active" and walked(good), 20, "the other account subscribed")
    assert [row[0] for row in env.rows()] == ["Archive"]


async def test_graph_failing_backs_off_and_recovers(env: Env, nursery):
    env.bed.graph.fail("create", 503, {"error": {"code": "ServiceUnavailable", "message": "busy"}},
                       {"Retry-After": "1"})
    renewer = env.renewer(env.account())
    await started(nursery, renewer)
    await eventually(lambda: renewer.state == "backoff", 10, "the failure seen")
    assert "ServiceUnavailable" in renewer.status()[0].last_error
    await eventually(lambda: env.rows() and renewer.state == "active", 20, "the retry succeeded")
    first, second = [call[4] for call in env.bed.graph.calls_to("create")]
    assert second - first >= 1.0  # Retry-After honoured
