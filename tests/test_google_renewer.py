"""The watch renewer of a Gmail account, and the Gmail runtime on reload, against the fake Google.

Time is trio's ``MockClock`` running at real speed, jumped ahead over the
days and resync intervals a renewer sleeps through.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from google_fake import authorized_user_file
from fakes import metric_value
from google_helpers import MAILBOX, account_config, gmail_bed
from inboundd import metrics
from inboundd.config import load_text
from inboundd.ingress.lease import Lease, lease_keys
from inboundd.provider import Context
from inboundd.providers.google.accounts import build_account
from inboundd.providers.google.renewer import RETRY_BASE, WatchRenewer
from inboundd.providers.google.runtime import GoogleRuntime
from inboundd.store.oauth_tokens import DbRotatedTokens
from waiting import eventually

DAY = 86400.0


@pytest.fixture
async def bed(fake_google, rio, redis_url, pg_dsn, mock_clock):
    mock_clock.rate = 1.0  # real speed, plus jumps
    async with gmail_bed(fake_google, rio, redis_url, pg_dsn) as gmail:
        yield gmail


def renewer_for(bed, account, *, instance: str | None = None) -> WatchRenewer:
    lease = None
    if instance is not None:
        lease = Lease(bed.rio, lease_keys("tg", "google", account.id), instance=instance, ttl=30.0)
    return WatchRenewer(account, walker=bed.walker, lease=lease)


async def test_watch_on_start_renewed_daily_and_walks_without_pushes(bed, fake_google, mock_clock):
    account = bed.add_account(resync_interval=1800.0)
    renewer = renewer_for(bed, account)
    async with trio.open_nursery() as nursery:
        await nursery.start(renewer.run)
        assert renewer.state == "watching"
        assert fake_google.mailbox(MAILBOX).watches == [
            {"topicName": "projects/acme/topics/inboundd-gmail", "labelIds": ["INBOX"], "labelFilterBehavior": "include"}]
        assert await bed.cursor() == fake_google.mailbox(MAILBOX).history_id  # a new mailbox starts now
        await eventually(lambda: renewer.last_walk_at is not None, 10, "the first walk")
        status = renewer.status()
        assert (status.watch, status.state) == ("ok", "watching")
        assert status.watch_expiration and status.watch_expiration - status.last_renewal > 6 * DAY

        # No push comes (Pub/Sub dropped it): the resync walk finds the message anyway.
        message_id = fake_google.add_message(MAILBOX)
        mock_clock.jump(1800)
        await eventually(lambda: [job.pointer.message_id for job in bed.message_jobs()] == [message_id], 10,
                         "the scheduled walk to queue the message")
        assert fake_google.count("watch") == 1

        mock_clock.jump(DAY)
        await eventually(lambda: fake_google.count("watch") == 2, 10, "the daily renewal")
        nursery.cancel_scope.cancel()
    assert renewer.state == "stopped"
    assert fake_google.count("stop") == 0  # a shutdown keeps the watch: pushes wait in Pub/Sub for the next start


async def test_a_failed_watch_backs_off_then_recovers(bed, fake_google, mock_clock):
    account = bed.add_account()
    fake_google.fail("POST", r"/watch$", 500, {"error": {"code": 500, "errors": [{"reason": "backendError"}]}})
    renewer = renewer_for(bed, account)
    async with trio.open_nursery() as nursery:
        await nursery.start(renewer.run)
        assert renewer.state == "backoff" and "backendError" in renewer.status().error
        mock_clock.jump(RETRY_BASE + 1)
        await eventually(lambda: renewer.state == "watching", 10, "the retry to succeed")
        assert renewer.status().error is None
        nursery.cancel_scope.cancel()


async def test_refused_credentials_pause_that_account_only(bed, fake_google, mock_clock):
    good = bed.add_account()
    config = account_config(fake_google, id="revoked-gmail", email="revoked@acme.com")
    fake_google.mailbox("revoked@acme.com")
    bad = build_account(config, authorized_user_file(fake_google, "1//revoked"), bed.clients, DbRotatedTokens(bed.db))
    before = metric_value(metrics.google_auth_failures, "revoked-gmail", "invalid_grant")
    renewers = [renewer_for(bed, good), renewer_for(bed, bad)]
    async with trio.open_nursery() as nursery:
        for renewer in renewers:
            await nursery.start(renewer.run)
        assert [r.state for r in renewers] == ["watching", "auth_failed"]
        status = renewers[1].status()
        assert status.error.startswith("invalid_grant: Token has been expired or revoked") and status.retry_at
        assert metric_value(metrics.google_auth_failures, "revoked-gmail", "invalid_grant") == before + 1
        # The operator re-consents (the token works again) and reloads: retried at once.
        fake_google.grant("revoked@acme.com", "1//revoked")
        renewers[1].kick()
        await eventually(lambda: renewers[1].state == "watching", 10, "the account to recover")
        nursery.cancel_scope.cancel()


async def test_one_daemon_renews_a_mailbox_and_another_takes_over(bed, fake_google, mock_clock):
    account = bed.add_account()
    first, second = renewer_for(bed, account, instance="daemon-a"), renewer_for(bed, account, instance="daemon-b")
    async with trio.open_nursery() as nursery:
        scope_a = trio.CancelScope()

        async def run_a(task_status=trio.TASK_STATUS_IGNORED):
            with scope_a:
                await first.run(task_status=task_status)

        await nursery.start(run_a)
        await nursery.start(second.run)
        assert (first.state, second.state) == ("watching", "standby")
        assert second.status().watch == "standby"
        assert fake_google.count("watch") == 1
        scope_a.cancel()  # daemon A stops: it releases the lease
        await eventually(lambda: first.state == "stopped", 5, "daemon A to stop")
        mock_clock.jump(10)
        await eventually(lambda: second.state == "watching", 10, "daemon B to take over")
        assert fake_google.count("watch") == 2
        nursery.cancel_scope.cancel()


async def test_reload_stops_the_watch_of_a_removed_account(bed, fake_google, mock_clock, tmp_path: Path):
    fake_google.grant(MAILBOX, "1//support")
    fake_google.grant("sales@acme.com", "1//sales")
    for name, token in (("support", "1//support"), ("sales", "1//sales")):
        (tmp_path / f"{name}.json").write_text(authorized_user_file(fake_google, token))

    def table(id_: str, email: str, credentials: str) -> str:
        return (f'[[google]]\nid = "{id_}"\ntenant = "acme"\nemail = "{email}"\ncredentials_file = "{credentials}"\n'
                f'topic = "projects/acme/topics/inboundd-gmail"\n'
                f'push_audience = "https://inbound.example.com/webhooks/google"\n'
                f'push_service_account = "pubsub-push@acme.iam.gserviceaccount.com"\n'
                f'gmail_url = "{fake_google.url}"\ncerts_url = "{fake_google.certs_url}"\n')

    both = load_text(table("support-gmail", MAILBOX, "support.json") + table("sales-gmail", "sales@acme.com",
                                                                            "sales.json"), base=tmp_path)
    only_support = load_text(table("support-gmail", MAILBOX, "support.json"), base=tmp_path)
    context = Context(cfg=both, queue=bed.queue, rio=bed.rio, db=bed.db, cursors=bed.cursors,
                      instance_id="daemon-a", key_prefix="tg")
    runtime = GoogleRuntime(context)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            status = await runtime.status()
            assert [(a["account"], a["state"]) for a in status["gmail"]] == [
                ("sales-gmail", "watching"), ("support-gmail", "watching")]
            kept = runtime.accounts["support-gmail"]
            await runtime.apply_config(only_support)
            assert fake_google.mailbox("sales@acme.com").stops == 1 and fake_google.mailbox(MAILBOX).stops == 0
            assert [a["account"] for a in (await runtime.status())["gmail"]] == ["support-gmail"]
            assert runtime.accounts["support-gmail"] is kept  # unchanged: its tokens and state are kept
            assert runtime.summary() == "gmail: 1 watching"
            nursery.cancel_scope.cancel()
    finally:
        await runtime.aclose()


async def test_inboundctl_unsubscribe_stops_the_watch_unless_a_daemon_owns_the_mailbox(bed, fake_google,
                                                                                         tmp_path: Path):
    from inboundd.provider import AccountBusy
    from inboundd.providers.google import PROVIDER

    (tmp_path / "gmail.json").write_text(authorized_user_file(fake_google, fake_google.grant(MAILBOX)))
    cfg = load_text(f'[redis]\nkey_prefix = "tg"\n[daemon]\ninstance_id = "inboundctl-host"\n[[google]]\n'
                    f'id = "support-gmail"\nemail = "{MAILBOX}"\ncredentials_file = "gmail.json"\n'
                    f'topic = "projects/acme/topics/inboundd-gmail"\n'
                    f'push_audience = "https://inbound.example.com/webhooks/google"\n'
                    f'push_service_account = "pubsub-push@acme.iam.gserviceaccount.com"\n'
                    f'gmail_url = "{fake_google.url}"\ncerts_url = "{fake_google.certs_url}"\n', base=tmp_path)
    account = bed.add_account()
    owner = renewer_for(bed, account, instance="daemon-a")
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def run_owner(task_status=trio.TASK_STATUS_IGNORED):
            with scope:
                await owner.run(task_status=task_status)

        await nursery.start(run_owner)
        with pytest.raises(AccountBusy, match="owned by a running daemon"):
            await PROVIDER.unsubscribe(cfg, "support-gmail", bed.rio, bed.db)
        assert fake_google.mailbox(MAILBOX).stops == 0
        scope.cancel()  # the daemon stops (its lease released; the watch stays)
    assert await PROVIDER.unsubscribe(cfg, "support-gmail", bed.rio, bed.db) == [
        (f"Gmail watch of {MAILBOX}", "deleted")]
    assert fake_google.mailbox(MAILBOX).stops == 1
