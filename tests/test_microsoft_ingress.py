"""The Graph webhook handler and the consume-time source, on the suite's Redis and PostgreSQL, without HTTP.

What the in-process daemon tests cannot easily show: a notification for a
subscription another daemon created (found in PostgreSQL, not in memory),
a lifecycle event left in Redis for the account's owner, the account pause
at consume time, and the checks' cost bounded against floods of forged ids.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
import trio

from inboundd import jobs
from inboundd.config_schema import QueueConfig
from inboundd.ingress.httpclients import HttpClients
from inboundd.ingress.webhook import WebhookRequest
from inboundd.jobs import MicrosoftPointer, new_job
from inboundd.outcomes import Outcome, TransientError
from inboundd.providers.microsoft.account import MicrosoftAccount
from inboundd.providers.microsoft.book import SubscriptionBook
from inboundd.providers.microsoft.ingress import WebhookHandler
from inboundd.providers.microsoft.lifecycle import LifecycleRequests
from inboundd.providers.microsoft.source import MicrosoftSource
from inboundd.queue import Queue
from inboundd.redisio import RedisIO
from inboundd.source import FetchedMessage, SourceUnavailable
from inboundd.store import graph_subscriptions as rows
from inboundd.store.db import Database
from m365_bed import MAILBOX, GraphBed, mime, pools

TENANT_GUID = "84bd8158-6d4d-4958-8b9f-9d6445542f95"


class Env:
    def __init__(self, bed: GraphBed, db: Database, rio: RedisIO, clients: HttpClients, redis_url: str) -> None:
        self.bed = bed
        self.db = db
        self.rio = rio
        self.redis_url = redis_url
        self.clients = clients
        self.accounts: dict[str, MicrosoftAccount] = {}
        self.book = SubscriptionBook(db, lambda a: self.accounts[a].tenant_ids() if a in self.accounts else None)
        self.requests = LifecycleRequests(rio, "inboundd")
        self.woken: list[str] = []
        self.handler = WebhookHandler(accounts=lambda: self.accounts, book=self.book, queue=Queue(rio, QueueConfig()),
                                      requests=self.requests, wake=self.woken.append)
        self.source = MicrosoftSource(lambda: self.accounts)

    def add_account(self, account_id: str = "support-m365", **keys: object) -> MicrosoftAccount:
        account = self.accounts[account_id] = self.bed.load_account(self.clients, account_id, **keys)
        return account

    async def store_subscription(self, sub_id: str, secret: str, account: str = "support-m365",
                                 folder: str = "Inbox") -> None:
        row = rows.SubscriptionRow(account, folder, sub_id, f"users/{MAILBOX}/mailFolders('{folder}')/messages",
                                   "https://x/webhooks/microsoft", "https://x/webhooks/microsoft/lifecycle", secret,
                                   TENANT_GUID, time.time() + 3600, time.time())
        await self.db.run(rows.save, row)

    async def post(self, items: list[dict], path: str = "/webhooks/microsoft"):
        return await self.handler.handle(WebhookRequest(method="POST", path=path, body=json.dumps(
            {"value": items}).encode(), received_at=time.time()))

    def enqueued(self) -> list[jobs.Job]:
        with redis.Redis.from_url(self.redis_url) as client:
            return [jobs.decode(fields[b"job"]) for _, fields in client.xrange("{inboundd}:stream")]


def item(sub: str, secret: str, message: str = "m1", tenant: str = TENANT_GUID, **extra: object) -> dict:
    body = {"subscriptionId": sub, "clientState": secret, "tenantId": tenant, "changeType": "created",
            "resource": f"Users/u/Messages/{message}", "resourceData": {"id": message}}
    body.update(extra)
    return body


@pytest.fixture
async def env(tmp_path: Path, redis_url: str, pg_dsn: str) -> AsyncIterator[Env]:
    bed = GraphBed(tmp_path / "m365", validate_urls=False)
    try:
        async with pools(redis_url, pg_dsn) as (rio, db, clients):
            yield Env(bed, db, rio, clients, redis_url)
    finally:
        bed.close()


# --------------------------------------------------------------------------- webhook


async def test_a_subscription_another_daemon_created_is_found_in_postgresql(env: Env):
    env.add_account()
    await env.store_subscription("sub-elsewhere", "their-secret")
    reply = await env.post([item("sub-elsewhere", "their-secret", "m1"), item("sub-elsewhere", "their-secret", "m2")])
    assert reply.status == 202
    pointers = [job.pointer for job in env.enqueued()]
    assert pointers == [
        MicrosoftPointer(account="support-m365", message_id="m1", folder="Inbox", subscription_id="sub-elsewhere"),
        MicrosoftPointer(account="support-m365", message_id="m2", folder="Inbox", subscription_id="sub-elsewhere"),
    ]
    assert [job.tenant for job in env.enqueued()] == ["acme", "acme"]


async def test_a_removed_account_s_subscription_is_unknown(env: Env):
    await env.store_subscription("sub-orphan", "secret")  # its account is no longer configured
    reply = await env.post([item("sub-orphan", "secret")])
    assert reply.status == 202 and env.enqueued() == []


async def test_forged_ids_are_looked_up_once_per_negative_ttl(env: Env, monkeypatch):
    env.add_account()
    queries: list[list[str]] = []
    real = rows.by_ids

    def counting(conn, ids):
        queries.append(sorted(ids))
        return real(conn, ids)

    monkeypatch.setattr(rows, "by_ids", counting)
    for _ in range(5):
        assert (await env.post([item("forged-1", "x"), item("forged-2", "x")])).status == 202
    assert queries == [["forged-1", "forged-2"]]
    assert env.enqueued() == []


async def test_postgresql_down_during_a_lookup_is_a_503(env: Env):
    env.add_account()
    await env.db.close()
    reply = await env.post([item("sub-x", "s")])
    assert reply.status == 503 and dict(reply.headers)["retry-after"]


async def test_a_lifecycle_event_is_left_in_redis_for_the_owner(env: Env):
    env.add_account()
    await env.store_subscription("sub-1", "s1")
    reply = await env.post([{"subscriptionId": "sub-1", "clientState": "s1", "tenantId": TENANT_GUID,
                             "lifecycleEvent": "missed"}], path="/webhooks/microsoft/lifecycle")
    assert reply.status == 202 and env.woken == ["support-m365"]
    assert await env.requests.pending_accounts() == {"support-m365"}
    assert await env.requests.take("support-m365") == [("Inbox", "resync")]
    assert await env.requests.take("support-m365") == [] and await env.requests.pending_accounts() == set()


async def test_requests_of_one_account_leave_the_others(env: Env):
    await env.requests.put([("a", "Inbox", "resync"), ("a|b", "Inbox", "renew"), ("b", "X|Y", "recreate")])
    assert await env.requests.take("b") == [("X|Y", "recreate")]
    assert await env.requests.pending_accounts() == {"a"}


# --------------------------------------------------------------------------- consume time


def job_for(message_id: str, account: str = "support-m365"):
    return new_job(MicrosoftPointer(account=account, message_id=message_id, folder="Inbox"), tenant="acme")


async def test_fetch_returns_the_raw_message_with_its_provider_id(env: Env):
    env.add_account()
    raw = mime(1)
    message = env.bed.graph.add_message(MAILBOX, "Inbox", raw)
    fetched = await env.source.fetch(job_for(message), 1024 * 1024)
    assert fetched == FetchedMessage(raw=raw, provider_message_id=message, folder="Inbox", size=len(raw))


async def test_refused_credentials_pause_only_that_account(env: Env):
    good = env.add_account("good-m365")
    env.add_account("bad-m365")
    message = env.bed.graph.add_message(MAILBOX, "Inbox", mime(2))
    env.bed.graph.fail("value", 403, {"error": {"code": "ErrorAccessDenied", "message": "Access is denied."}})
    with pytest.raises(TransientError) as caught:
        await env.source.fetch(job_for(message, "bad-m365"), 1024 * 1024)
    assert caught.value.retry_after >= 600 and "ErrorAccessDenied" in str(caught.value)
    calls = len(env.bed.graph.calls_to("value"))
    with pytest.raises(TransientError, match="is paused"):
        await env.source.fetch(job_for(message, "bad-m365"), 1024 * 1024)
    assert len(env.bed.graph.calls_to("value")) == calls  # paused: Graph is not called
    assert isinstance(await env.source.fetch(job_for(message, "good-m365"), 1024 * 1024), FetchedMessage)
    assert not good.paused()
    env.accounts["bad-m365"].kick()  # SIGHUP: try again
    assert isinstance(await env.source.fetch(job_for(message, "bad-m365"), 1024 * 1024), FetchedMessage)
    assert env.accounts["bad-m365"].auth_error is None


async def test_an_unconfigured_account_is_a_job_error_not_a_skip(env: Env):
    with pytest.raises(LookupError, match="not configured"):
        await env.source.fetch(job_for("m", "gone"), 1024)


async def test_unavailable_graph_is_transient_with_its_retry_after(env: Env):
    env.add_account()
    env.bed.graph.fail("value", 503, b"", {"Retry-After": "9"})
    with pytest.raises(TransientError) as caught:
        await env.source.fetch(job_for("m"), 1024)
    assert caught.value.retry_after == 9.0


async def test_post_action_move_only_for_a_processed_message(env: Env):
    env.add_account(post_action="move:Archive")
    first = env.bed.graph.add_message(MAILBOX, "Inbox", mime(3))
    second = env.bed.graph.add_message(MAILBOX, "Inbox", mime(4))
    await env.source.after_commit(job_for(first), Outcome("processed", None, 1))
    await env.source.after_commit(job_for(second), Outcome("duplicate", "message_id", 1))
    archive = env.bed.box.folder("Archive").id
    assert env.bed.graph.messages[first].folder == archive
    assert env.bed.graph.messages[second].folder != archive
    env.bed.graph.delete_message(second)
    await env.source.after_commit(job_for(second), Outcome("processed", None, 2))  # never raises


async def test_oversize_is_a_skip(env: Env):
    env.add_account()
    message = env.bed.graph.add_message(MAILBOX, "Inbox", b"x" * 5000)
    assert await env.source.fetch(job_for(message), 1000) == SourceUnavailable(
        "oversize", "5000 bytes announced, max_message_size is 1000")


async def test_cancelling_a_fetch_leaves_no_task_behind(env: Env):
    env.add_account()
    message = env.bed.graph.add_message(MAILBOX, "Inbox", b"y" * (32 * 1024 * 1024))
    env.bed.graph.chunked.add(message)
    with trio.move_on_after(0.05) as scope:
        await env.source.fetch(job_for(message), 0)
    assert scope.cancelled_caught
