"""IMAP listeners against a real Dovecot: the operator's stories of ingress.

Every test runs the real listener code (imapclient in threads, IDLE on socket
readability) against the private Dovecot; the queue is a small recorder with
the queue's ``enqueue_many`` so a test can make an enqueue fail.
"""

from __future__ import annotations

import os
import pwd
import re
import time
from pathlib import Path

import pytest
import trio

from imap_helpers import (
    BlackHoleProxy,
    append,
    imap,
    make_accounts,
    message,
)
from fakes import RecordingQueue
from inboundd.config import RedisConfig
from inboundd.ingress.cursors import DbCursorStore, MemoryCursorStore, StoredCursor
from inboundd.providers.imap.conn import CLOSE_TIMEOUT, default_limiter
from inboundd.providers.imap.listener import ImapListener, ImapListenerGroup
from inboundd.redisio import RedisIO
from inboundd.store.db import Database
from inboundd.store.migrate import migrate
from services import DovecotServer
from waiting import eventually


def listener_for(account, queue, cursors, folder="INBOX", **kw):
    return ImapListener(account, folder, queue=queue, cursors=cursors, limiter=default_limiter(), **kw)


def drop_into_maildir(server: DovecotServer, user: str, count: int, start: int = 0, folder: str = "") -> None:
    """Deliver like an MDA does (works while Dovecot is down): write files into Maildir/new."""
    nobody = pwd.getpwnam("nobody")
    base = server.mail / user / "Maildir"
    if folder:
        base = base / f".{folder}"
    for sub in ("", "new", "cur", "tmp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for path in [server.mail / user, *base.parents, base, base / "new", base / "cur", base / "tmp"]:
        if str(path).startswith(str(server.mail)):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
    for n in range(start, start + count):
        path = base / "new" / f"{time.time_ns()}.M{n}P{os.getpid()}.test"
        path.write_bytes(message(n))
        os.chown(path, nobody.pw_uid, nobody.pw_gid)


@pytest.fixture
def own_dovecot():
    """A Dovecot of this test's own, which it may stop and start (one mailbox: ``take()``)."""
    server = DovecotServer(users=1).start()
    yield server
    server.cleanup()


# ---------------------------------------------------------------------------- IDLE path and the cursor


async def test_append_while_idling_is_enqueued_once_and_then_the_cursor_moves(dovecot, imap_user, tmp_path):
    user, password = imap_user
    [account] = make_accounts(tmp_path, dovecot.port, [imap_user])
    queue, cursors = RecordingQueue(), MemoryCursorStore()
    seen_at_ack: list[StoredCursor | None] = []

    async def after_ack(batch):
        # The moment Redis acknowledged: the stored cursor must not be past this batch yet.
        seen_at_ack.append(await cursors.load(account.id, "INBOX"))

    queue.after_ack = after_ack
    listener = listener_for(account, queue, cursors)
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        assert listener.state == "idle"
        start_cursor = await cursors.load(account.id, "INBOX")
        assert start_cursor is not None and start_cursor.last_uid == 0
        [uid] = await append(dovecot.port, user, password)
        await eventually(lambda: listener.status().last_uid == uid, 5, "the cursor to reach the new UID")
        assert queue.uids() == [uid]
        assert seen_at_ack == [start_cursor]
        assert (await cursors.load(account.id, "INBOX")) == StoredCursor(uidvalidity=start_cursor.uidvalidity, last_uid=uid)
        await eventually(lambda: listener.state == "idle", 5, "back to idle")
        [uid2] = await append(dovecot.port, user, password, start=1)
        await eventually(lambda: queue.uids() == [uid, uid2], 5, "the second pointer")
        assert listener.status().enqueued == 2
        nursery.cancel_scope.cancel()
    assert listener.state == "stopped"
    assert queue.uids() == [uid, uid2]  # once each


async def test_failed_enqueue_does_not_advance_the_cursor_and_is_retried(dovecot, imap_user, tmp_path):
    user, password = imap_user
    [account] = make_accounts(tmp_path, dovecot.port, [imap_user])
    queue, cursors = RecordingQueue(), MemoryCursorStore()
    listener = listener_for(account, queue, cursors)
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        before = await cursors.load(account.id, "INBOX")
        queue.fail = ConnectionError("redis down")
        attempts = queue.attempts
        uids = await append(dovecot.port, user, password, count=3)
        await eventually(lambda: queue.attempts >= attempts + 2, 10, "retried enqueue attempts")
        assert listener.status().last_error and "redis down" in listener.status().last_error
        assert await cursors.load(account.id, "INBOX") == before
        assert queue.jobs == []
        queue.fail = None
        await eventually(lambda: queue.uids() == uids, 10, "the pointers once the queue is back")
        await eventually(lambda: listener.status().last_uid == uids[-1], 5, "the cursor")
        assert (await cursors.load(account.id, "INBOX")).last_uid == uids[-1]
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------- catch-up and first start


async def test_catch_up_after_downtime_from_the_database_cursor(dovecot, imap_user, tmp_path, pg_dsn):
    from inboundd.config import PostgresConfig

    user, password = imap_user
    [account] = make_accounts(tmp_path, dovecot.port, [imap_user])
    db = Database(PostgresConfig(dsn=pg_dsn))
    await db.open()
    try:
        await db.run(migrate)
        cursors = DbCursorStore(db)
        early = await append(dovecot.port, user, password, count=2)
        queue = RecordingQueue()
        listener = listener_for(account, queue, cursors)
        async with trio.open_nursery() as nursery:
            await nursery.start(listener.run)  # start_from = "now": the two old messages are not ingested
            nursery.cancel_scope.cancel()
        assert queue.jobs == []
        stored = await cursors.load(account.id, "INBOX")
        assert stored is not None and stored.last_uid == early[-1]

        missed = await append(dovecot.port, user, password, count=40, start=2)   # the daemon is down
        queue = RecordingQueue()
        listener = listener_for(account, queue, cursors)
        async with trio.open_nursery() as nursery:
            await nursery.start(listener.run)   # started() = caught up
            assert queue.uids() == missed       # every missed UID, in UID order, once
            assert {j.pointer.uidvalidity for j in queue.jobs} == {stored.uidvalidity}
            nursery.cancel_scope.cancel()
        assert (await cursors.load(account.id, "INBOX")).last_uid == missed[-1]

        queue = RecordingQueue()   # a restart with nothing new enqueues nothing
        listener = listener_for(account, queue, cursors)
        async with trio.open_nursery() as nursery:
            await nursery.start(listener.run)
            nursery.cancel_scope.cancel()
        assert queue.jobs == []
    finally:
        await db.close()


@pytest.mark.parametrize("start_from, expected", [("now", []), ("all", [1, 2, 3, 4, 5]), ("last:2", [4, 5]),
                                                   ("last:9", [1, 2, 3, 4, 5])])
async def test_first_start(dovecot, imap_user, tmp_path, start_from, expected):
    user, password = imap_user
    uids = await append(dovecot.port, user, password, count=5)
    assert uids == [1, 2, 3, 4, 5]
    [account] = make_accounts(tmp_path, dovecot.port, [imap_user], start_from=start_from)
    queue, cursors = RecordingQueue(), MemoryCursorStore()
    listener = listener_for(account, queue, cursors)
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        assert queue.uids() == expected
        assert (await cursors.load(account.id, "INBOX")).last_uid == 5
        [new] = await append(dovecot.port, user, password, start=5)
        await eventually(lambda: queue.uids() == expected + [new], 5, "the new message after the first start")
        nursery.cancel_scope.cancel()


async def test_first_start_on_an_empty_folder_then_new_mail(dovecot, imap_user, tmp_path):
    user, password = imap_user
    [account] = make_accounts(tmp_path, dovecot.port, [imap_user], start_from="last:3")
    queue, cursors = RecordingQueue(), MemoryCursorStore()
    listener = listener_for(account, queue, cursors)
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        assert queue.jobs == []
        uids = await append(dovecot.port, user, password, count=4)
        await eventually(lambda: queue.uids() == uids, 5, "all four new messages")
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------- UIDVALIDITY


@pytest.mark.parametrize("how", ["delete", "rename"])
async def test_uidvalidity_change_under_the_listener_rescans_the_folder(dovecot, imap_user, tmp_path, how):
    user, password = imap_user
    await imap(dovecot.port, user, password, lambda c: c.create_folder("Work"))
    # Dovecot announces a deleted folder during IDLE (an untagged NO) but not a renamed one:
    # that is found by the periodic re-EXAMINE every examine_interval.
    [account] = make_accounts(tmp_path, dovecot.port, [imap_user], folders=["Work"], start_from="all",
                              examine_interval=1.0)
    queue, cursors = RecordingQueue(), MemoryCursorStore()
    listener = listener_for(account, queue, cursors, folder="Work")
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        old = await append(dovecot.port, user, password, count=2, folder="Work")
        await eventually(lambda: queue.uids() == old, 5, "the first two")
        first_validity = listener.status().uidvalidity

        def recreate(c):
            # The folder is replaced: same name, new UIDVALIDITY, its messages under new UIDs.
            if how == "rename":
                c.rename_folder("Work", "Work-old")
            else:
                c.delete_folder("Work")
            c.create_folder("Work")
            for n in range(3):
                c.append("Work", message(f"new{n}"))

        await imap(dovecot.port, user, password, recreate)
        await eventually(lambda: len(queue.jobs) == 5 and listener.state == "idle", 10, "the rescan of the new folder")
        status = listener.status()
        assert status.uidvalidity != first_validity
        rescanned = [j.pointer for j in queue.jobs[2:]]
        assert [p.uid for p in rescanned] == [1, 2, 3]
        assert {p.uidvalidity for p in rescanned} == {status.uidvalidity}
        assert status.last_uid == 3
        assert (await cursors.load(account.id, "Work")) == StoredCursor(uidvalidity=status.uidvalidity, last_uid=3)
        # Nothing lost, nothing pointed at twice.
        identities = [j.identity() for j in queue.jobs]
        assert len(set(identities)) == len(identities) == 5
        [later] = await append(dovecot.port, user, password, folder="Work", start=9)
        await eventually(lambda: len(queue.jobs) == 6, 5, "new mail in the new folder")
        assert queue.jobs[-1].pointer.uid == later == 4
        nursery.cancel_scope.cancel()


async def test_a_replaced_folder_is_noticed_even_when_the_server_sends_keepalives(tmp_path):
    """Keepalives (``* OK Still here``) prove the connection, not the folder: re-EXAMINE still happens."""

    class ChattyDovecot(DovecotServer):
        def _config_text(self) -> str:
            return super()._config_text().replace("imap_idle_notify_interval = 2 mins",
                                                  "imap_idle_notify_interval = 1 secs")

    server = ChattyDovecot(users=1).start()
    try:
        user, password = server.take()
        await imap(server.port, user, password, lambda c: c.create_folder("Work"))
        [account] = make_accounts(tmp_path, server.port, [(user, password)], folders=["Work"], start_from="all",
                                  examine_interval=3.0)
        queue = RecordingQueue()
        listener = listener_for(account, queue, MemoryCursorStore(), folder="Work")
        async with trio.open_nursery() as nursery:
            await nursery.start(listener.run)
            old = await append(server.port, user, password, count=2, folder="Work")
            await eventually(lambda: queue.uids() == old, 5, "the first two")

            def replace(c):
                c.rename_folder("Work", "Work-old")  # announced to nobody during IDLE
                c.create_folder("Work")
                for n in range(3):
                    c.append("Work", message(f"new{n}"))

            await imap(server.port, user, password, replace)
            await eventually(lambda: len(queue.jobs) == 5, 15, "the rescan despite a keepalive every second")
            assert [j.pointer.uid for j in queue.jobs[2:]] == [1, 2, 3]
            nursery.cancel_scope.cancel()
    finally:
        server.cleanup()


class ExistsDuringSearchProxy(BlackHoleProxy):
    """Adds ``* 999 EXISTS`` to the next UID SEARCH answer, as if mail arrived meanwhile (one connection)."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.inject = False
        self._partial = b""

    def server_says(self, chunk: bytes) -> bytes:
        *lines, self._partial = (self._partial + chunk).split(b"\r\n")
        out = b""
        for line in lines:
            if self.inject and re.match(rb"^\S+ OK Search completed", line):
                self.inject = False
                out += b"* 999 EXISTS\r\n"
            out += line + b"\r\n"
        return out


async def test_new_mail_announced_during_search_is_searched_for_again(dovecot, imap_user, tmp_path):
    """Such mail may be missing from the SEARCH answer and is not announced again in IDLE."""
    user, password = imap_user
    queue = RecordingQueue()
    async with trio.open_nursery() as nursery:
        proxy = ExistsDuringSearchProxy(dovecot.port)
        await nursery.start(proxy.run)
        [account] = make_accounts(tmp_path, proxy.port, [imap_user], start_from="all")
        listener = listener_for(account, queue, MemoryCursorStore())
        await nursery.start(listener.run)
        searches_before = proxy.sent.count(b"UID SEARCH")
        proxy.inject = True
        [uid] = await append(dovecot.port, user, password)
        await eventually(lambda: queue.uids() == [uid], 5, "the new message")
        await eventually(lambda: proxy.sent.count(b"UID SEARCH") == searches_before + 2, 5, "a second search")
        assert queue.uids() == [uid]  # searched twice, enqueued once
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------- reconnects


async def test_dovecot_restart_during_idle_reconnects_and_misses_nothing(own_dovecot, tmp_path):
    user, password = own_dovecot.take()
    [account] = make_accounts(tmp_path, own_dovecot.port, [(user, password)])
    queue, cursors = RecordingQueue(), MemoryCursorStore()
    listener = listener_for(account, queue, cursors)
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        first = await append(own_dovecot.port, user, password, count=2)
        await eventually(lambda: queue.uids() == first, 5, "mail before the restart")
        await trio.to_thread.run_sync(own_dovecot.stop)
        await eventually(lambda: listener.state in ("backoff", "connecting"), 10, "the listener to notice")
        drop_into_maildir(own_dovecot, user, 5, start=2)   # mail delivered while IMAP is down
        await trio.to_thread.run_sync(own_dovecot.start)
        await eventually(lambda: len(queue.jobs) == 7, 20, "the mail delivered during the outage")
        assert queue.uids() == [1, 2, 3, 4, 5, 6, 7]
        assert listener.status().reconnects >= 1
        await eventually(lambda: listener.state == "idle", 5, "idle again")
        [after] = await append(own_dovecot.port, user, password, start=7)
        await eventually(lambda: queue.uids()[-1:] == [after], 5, "mail after the reconnect")
        assert len(queue.jobs) == 8
        nursery.cancel_scope.cancel()


async def test_a_session_ended_by_redis_waits_for_redis_and_reconnects_at_once_without_imap_backoff(
        dovecot, imap_user, tmp_path):
    """Redis (the queue) stops answering: the IMAP server did nothing wrong, so its 30 s reconnect backoff
    is not what the listener waits out — it waits for Redis and is back within a probe interval."""
    from inboundd import log
    from inboundd.availability import PROBE_CAP, Availability, Dependencies
    from inboundd.outage import Outage

    user, password = imap_user
    [account] = make_accounts(tmp_path, dovecot.port, [imap_user], reconnect_base=30, reconnect_cap=300)
    queue, cursors = RecordingQueue(), MemoryCursorStore()
    probes: list[float] = []

    async def probe() -> None:   # "Redis" answers again when the queue stops failing
        probes.append(trio.current_time())
        if queue.fail is not None:
            raise ConnectionError("still down")

    dependencies = Dependencies()
    dependencies.add(Availability(Outage("redis", log.get_logger("test"), now=trio.current_time), probe),
                     lambda exc: isinstance(exc, ConnectionError))
    listener = listener_for(account, queue, cursors, dependencies=dependencies)
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        queue.fail = ConnectionError("redis down")
        uids = await append(dovecot.port, user, password, count=3)
        await eventually(lambda: len(probes) >= 4, 10, "Redis probed a few times while down")
        status = listener.status()
        assert status.state == "backoff" and status.retry_at is None and "redis not answering" in status.last_error
        assert queue.attempts == 1                 # no IMAP reconnect while Redis is down
        back = trio.current_time()
        queue.fail = None
        await eventually(lambda: queue.uids() == uids, PROBE_CAP + 3, "the pointers once Redis answers")
        print(f"\nRedis back → pointers enqueued {trio.current_time() - back:.2f}s")
        await eventually(lambda: listener.state == "idle", 5, "idle again")
        assert listener.status().failures == 0
        nursery.cancel_scope.cancel()


async def test_polling_when_the_server_has_no_idle(tmp_path):
    class NoIdleDovecot(DovecotServer):
        def _config_text(self) -> str:
            return super()._config_text() + (
                "imap_capability = IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE SORT UNSELECT "
                "NAMESPACE UIDPLUS LITERAL+ MOVE\n")

    server = NoIdleDovecot(users=1).start()
    try:
        user, password = server.take()
        [account] = make_accounts(tmp_path, server.port, [(user, password)], poll_interval=0.2)
        queue, cursors = RecordingQueue(), MemoryCursorStore()
        listener = listener_for(account, queue, cursors)
        async with trio.open_nursery() as nursery:
            await nursery.start(listener.run)
            assert listener.state == "polling"
            assert listener.status().mode == "poll"
            uids = await append(server.port, user, password, count=3)
            await eventually(lambda: queue.uids() == uids, 5, "polled messages")
            more = await append(server.port, user, password, count=2, start=3)
            await eventually(lambda: queue.uids() == uids + more, 5, "the next poll")
            nursery.cancel_scope.cancel()
    finally:
        server.cleanup()


# ---------------------------------------------------------------------------- failures and isolation


def auth_failures_in_log(server, user: str) -> int:
    text = Path(server.log).read_text(errors="replace")
    return len(re.findall(rf"auth failed.*user=<{re.escape(user)}>", text))


async def test_wrong_password_reports_auth_failed_and_other_account_keeps_working(dovecot, tmp_path):
    good = dovecot.take()
    bad_user, _ = dovecot.take()
    accounts = make_accounts(tmp_path, dovecot.port, [(bad_user, "wrong"), good], auth_failure_limit=2,
                             auth_retry_interval=600)
    queue = RecordingQueue()
    group = ImapListenerGroup(accounts, queue=queue, cursors=MemoryCursorStore())
    async with trio.open_nursery() as nursery:
        await nursery.start(group.run)
        bad = {s.account: s for s in group.status()}["acct0"]
        await eventually(lambda: group.summary().get("auth_failed") == 1, 20, "auth_failed")
        bad = {s.account: s for s in group.status()}["acct0"]
        assert "AUTHENTICATIONFAILED" in bad.last_error or "Authentication failed" in bad.last_error
        assert bad.retry_at is not None and bad.retry_at - time.time() > 500   # slow retry, not a loop
        # Dovecot may write the second failure's line a moment after answering it: wait for both lines.
        await eventually(lambda: auth_failures_in_log(dovecot, bad_user) >= 2, 5, "both failures in the log")
        assert auth_failures_in_log(dovecot, bad_user) == 2

        [uid] = await append(dovecot.port, *good)
        await eventually(lambda: queue.uids("acct1") == [uid], 5, "the healthy account's mail")
        assert queue.uids("acct0") == []
        # Watching the server for a few seconds: no further login attempt from the failed account.
        await trio.sleep(3)
        assert auth_failures_in_log(dovecot, bad_user) == 2
        assert {s.account: s.state for s in group.status()} == {"acct0": "auth_failed", "acct1": "idle"}

        # SIGHUP (kick) retries at once; still wrong, so straight back to auth_failed after one attempt.
        group.kick()
        await eventually(lambda: auth_failures_in_log(dovecot, bad_user) == 3, 10, "the kicked attempt")
        await eventually(lambda: group.summary().get("auth_failed") == 1, 10, "auth_failed again")
        nursery.cancel_scope.cancel()


async def test_missing_folder_fails_alone(dovecot, imap_user, tmp_path):
    user, password = imap_user
    [account] = make_accounts(tmp_path, dovecot.port, [imap_user], folders=["INBOX", "Nope"])
    queue = RecordingQueue()
    group = ImapListenerGroup([account], queue=queue, cursors=MemoryCursorStore())
    async with trio.open_nursery() as nursery:
        await nursery.start(group.run)
        states = {s.folder: s for s in group.status()}
        assert states["INBOX"].state == "idle"
        # Nope retries every 25-50 ms (reconnect_base): on a loaded machine the snapshot may
        # catch it connecting again; what matters is that it fails, with its folder named.
        assert states["Nope"].state in ("backoff", "connecting") and "Nope" in states["Nope"].last_error
        [uid] = await append(dovecot.port, user, password)
        await eventually(lambda: queue.uids() == [uid], 5, "INBOX mail")
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------- ownership


async def test_two_groups_one_owner_and_takeover(dovecot, imap_user, tmp_path, redis_url):
    user, password = imap_user
    accounts = make_accounts(tmp_path, dovecot.port, [imap_user], lease=2)
    rio = RedisIO.from_config(RedisConfig(url=redis_url))
    queue, cursors = RecordingQueue(), MemoryCursorStore()
    a = ImapListenerGroup(accounts, queue=queue, cursors=cursors, rio=rio, instance_id="a")
    b = ImapListenerGroup(accounts, queue=queue, cursors=cursors, rio=rio, instance_id="b")
    async with trio.open_nursery() as nursery:
        a_scope = trio.CancelScope()

        async def run_a(task_status=trio.TASK_STATUS_IGNORED):
            with a_scope:
                await a.run(task_status=task_status)

        await nursery.start(run_a)
        await nursery.start(b.run)
        assert a.status()[0].state == "idle" and a.status()[0].lease_token == 1
        assert b.status()[0].state == "standby"
        first = await append(dovecot.port, user, password, count=3)
        await eventually(lambda: queue.uids() == first, 5, "mail through the owner")
        # Stays that way across several lease renewals.
        await trio.sleep(2.5)
        assert (a.status()[0].state, b.status()[0].state) == ("idle", "standby")

        a_scope.cancel()     # owner stops (drain / shutdown): releases its lease
        await eventually(lambda: b.status()[0].state == "idle", 5, "b to take over")
        assert b.status()[0].lease_token == 2
        more = await append(dovecot.port, user, password, count=2, start=3)
        await eventually(lambda: queue.uids() == first + more, 5, "mail through the new owner")
        nursery.cancel_scope.cancel()
    await rio.close()


# ---------------------------------------------------------------------------- shutdown


async def test_cancellation_sends_done_and_logout_quickly(dovecot, tmp_path):
    users = [dovecot.take() for _ in range(3)]
    accounts = make_accounts(tmp_path, dovecot.port, users)
    group = ImapListenerGroup(accounts, queue=RecordingQueue(), cursors=MemoryCursorStore())
    async with trio.open_nursery():
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            assert group.summary() == {"idle": 3}
            started = trio.current_time()
            nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - started
    assert elapsed < CLOSE_TIMEOUT, elapsed   # the bound by design; measured ~0.05 s
    assert group.status() == []

    def logged_out(user):
        return re.search(rf"imap\({re.escape(user)}\).*Disconnected: Logged out", Path(dovecot.log).read_text())

    for user, _ in users:
        await eventually(lambda: logged_out(user), 5, f"LOGOUT of {user} in the server log")


async def test_drain_and_resume(dovecot, imap_user, tmp_path):
    user, password = imap_user
    [account] = make_accounts(tmp_path, dovecot.port, [imap_user])
    queue = RecordingQueue()
    group = ImapListenerGroup([account], queue=queue, cursors=MemoryCursorStore())
    async with trio.open_nursery() as nursery:
        await nursery.start(group.run)
        with trio.fail_after(3):
            await group.drain()
        assert group.summary() == {"stopped": 1}
        uids = await append(dovecot.port, user, password, count=2)
        await group.resume()     # caught up before it returns
        assert queue.uids() == uids
        assert group.summary() == {"idle": 1}
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------- a connection that dies silently


async def test_a_silently_dead_connection_is_noticed_and_replaced(dovecot, imap_user, tmp_path):
    user, password = imap_user
    queue, cursors = RecordingQueue(), MemoryCursorStore()
    async with trio.open_nursery() as nursery:
        proxy = BlackHoleProxy(dovecot.port)
        await nursery.start(proxy.run)
        [account] = make_accounts(tmp_path, proxy.port, [imap_user], examine_interval=0.5, read_timeout=1.0)
        listener = listener_for(account, queue, cursors)
        await nursery.start(listener.run)
        assert listener.state == "idle"
        proxy.freeze_existing()
        [uid] = await append(dovecot.port, user, password)   # the listener's connection never hears of it
        # Found dead by the probe after examine_interval (no answer within read_timeout), then reconnected.
        await eventually(lambda: queue.uids() == [uid], 10, "the message after the reconnect")
        status = listener.status()
        assert status.reconnects == 1
        assert len(proxy.connections) == 2
        nursery.cancel_scope.cancel()


async def test_idle_is_reissued_before_idle_refresh(dovecot, imap_user, tmp_path):
    user, password = imap_user
    queue = RecordingQueue()
    async with trio.open_nursery() as nursery:
        proxy = BlackHoleProxy(dovecot.port)
        await nursery.start(proxy.run)
        [account] = make_accounts(tmp_path, proxy.port, [imap_user], idle_refresh=0.3)
        listener = listener_for(account, queue, MemoryCursorStore())
        await nursery.start(listener.run)
        # DONE then IDLE again, on the same connection, every idle_refresh.
        await eventually(lambda: proxy.sent.count(b" IDLE\r\n") >= 4, 5, "four IDLE commands")
        assert proxy.sent.count(b"DONE\r\n") >= 3
        assert len(proxy.connections) == 1 and listener.status().reconnects == 0
        [uid] = await append(dovecot.port, user, password)
        await eventually(lambda: queue.uids() == [uid], 5, "mail after several refreshes")
        nursery.cancel_scope.cancel()
