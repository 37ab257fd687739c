"""The consume-time IMAP fetcher and post-actions against a real Dovecot."""

from __future__ import annotations

import pytest
import trio

from fakes import imap_job
from imap_helpers import BlackHoleProxy, append, imap, make_accounts, message, proxied
from services import DovecotServer, free_port
from inboundd.outcomes import Outcome, TransientError
from inboundd.source import FetchedMessage, SourceUnavailable
from inboundd.providers.imap.conn import CLOSE_TIMEOUT
from inboundd.providers.imap import fetch as fetch_mod
from inboundd.providers.imap.fetch import ImapFetcher

#: What processing hands ``after_commit``: this job stored the message.
STORED = Outcome("processed", None, 1)


def job_for(account_id: str, uidvalidity: int, uid: int, folder: str = "INBOX"):
    return imap_job(uid, account_id, folder=folder, uidvalidity=uidvalidity)


async def uidvalidity(port, user, password, folder="INBOX") -> int:
    return await imap(port, user, password,
                      lambda c: c.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"])


async def flags(port, user, password, uid, folder="INBOX"):
    def work(c):
        c.select_folder(folder, readonly=True)
        return set(c.get_flags([uid]).get(uid, ()))
    return await imap(port, user, password, work)


@pytest.fixture
async def fetcher_factory():
    made: list[ImapFetcher] = []

    def make(accounts):
        fetcher = ImapFetcher(accounts)
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        await fetcher.aclose()


async def test_fetch_returns_the_message_and_never_sets_seen(dovecot, imap_user, tmp_path, fetcher_factory):
    user, password = imap_user
    [account] = make_accounts(tmp_path, dovecot.port, [imap_user])
    raw = message("hello", subject="fetch me")

    def put(c):
        return c.append("INBOX", raw)

    await imap(dovecot.port, user, password, put)
    validity = await uidvalidity(dovecot.port, user, password)
    fetcher = fetcher_factory([account])
    result = await fetcher.fetch(job_for(account.id, validity, 1), max_size=10_000_000)
    assert isinstance(result, FetchedMessage)
    assert result.raw == raw
    assert result.provider_message_id == f"{validity}:1"
    assert result.folder == "INBOX"
    assert result.size == len(raw)
    assert result.internal_date is not None and result.internal_date.tzinfo is not None
    assert b"\\Seen" not in await flags(dovecot.port, user, password, 1)


async def test_skips_uidvalidity_change_deleted_and_missing_folder(dovecot, imap_user, tmp_path):
    user, password = imap_user
    await append(dovecot.port, user, password, count=2)
    validity = await uidvalidity(dovecot.port, user, password)
    async with proxied(dovecot.port) as proxy:   # counts the fetcher's connections, and only those
        [account] = make_accounts(tmp_path, proxy.port, [imap_user])
        fetcher = ImapFetcher([account])
        try:
            result = await fetcher.fetch(job_for(account.id, validity + 1, 1), max_size=0)
            assert isinstance(result, SourceUnavailable) and result.reason == "uidvalidity_changed"

            def expunge(c):
                c.select_folder("INBOX")
                c.delete_messages([2])
                c.expunge()

            await imap(dovecot.port, user, password, expunge)
            result = await fetcher.fetch(job_for(account.id, validity, 2), max_size=0)
            assert isinstance(result, SourceUnavailable) and result.reason == "source_deleted"
            result = await fetcher.fetch(job_for(account.id, validity, 99), max_size=0)
            assert isinstance(result, SourceUnavailable) and result.reason == "source_deleted"
            result = await fetcher.fetch(job_for(account.id, validity, 1, folder="Gone"), max_size=0)
            assert isinstance(result, SourceUnavailable) and result.reason == "source_deleted"
            # The connection survived the skips: UID 1 is still fetched fine on it.
            assert isinstance(await fetcher.fetch(job_for(account.id, validity, 1), max_size=0), FetchedMessage)
            assert len(proxy.connections) == 1   # one pooled connection served all five
            assert proxy.sent.count(b" LOGIN ") == 1
        finally:
            await fetcher.aclose()


async def test_oversize_is_skipped_without_downloading(dovecot, imap_user, tmp_path):
    user, password = imap_user
    big = message("big") + b"x" * 50_000 + b"\r\n"
    await imap(dovecot.port, user, password, lambda c: c.append("INBOX", big))
    validity = await uidvalidity(dovecot.port, user, password)
    async with proxied(dovecot.port) as proxy:   # sees every byte the server sends the fetcher
        [account] = make_accounts(tmp_path, proxy.port, [imap_user])
        fetcher = ImapFetcher([account])
        try:
            result = await fetcher.fetch(job_for(account.id, validity, 1), max_size=10_000)
            assert isinstance(result, SourceUnavailable) and result.reason == "oversize"
            assert str(len(big)) in result.detail
        finally:
            await fetcher.aclose()
    # No message body was sent: the whole session is a few hundred bytes, none of the body.
    assert len(proxy.received) < 5_000 and b"x" * 100 not in proxy.received, len(proxy.received)


async def test_fetch_many_asks_each_folder_once_for_sizes_and_once_for_bodies(dovecot, imap_user, tmp_path,
                                                                             fetcher_factory, monkeypatch):
    user, password = imap_user
    [account] = make_accounts(tmp_path, dovecot.port, [imap_user], fetch_connections=2)
    await append(dovecot.port, user, password, count=3)
    big = message("big") + b"x" * 50_000 + b"\r\n"
    await imap(dovecot.port, user, password, lambda c: c.append("INBOX", big))  # UID 4
    await imap(dovecot.port, user, password, lambda c: c.create_folder("Other"))
    await append(dovecot.port, user, password, count=2, folder="Other")
    inbox = await uidvalidity(dovecot.port, user, password)
    other = await uidvalidity(dovecot.port, user, password, "Other")
    fetches: list[tuple[str, list[int]]] = []
    real = fetch_mod._fetch_uids

    def counted(conn, uids, items):
        fetches.append(("bodies" if b"BODY.PEEK[]" in items else "sizes", list(uids)))
        return real(conn, uids, items)

    monkeypatch.setattr(fetch_mod, "_fetch_uids", counted)
    fetcher = fetcher_factory([account])
    jobs = [job_for(account.id, inbox, 3), job_for(account.id, other, 1, "Other"), job_for(account.id, inbox, 1),
            job_for(account.id, inbox, 4), job_for(account.id, inbox, 99), job_for(account.id, inbox + 7, 2),
            job_for(account.id, other, 2, "Other"), job_for(account.id, inbox, 1, "Gone")]
    results = await fetcher.fetch_many(jobs, max_size=10_000)
    batch = sorted(fetches)  # two UID FETCH per folder: the sizes, then the bodies that fit
    singly = [await fetcher.fetch(job, max_size=10_000) for job in jobs]
    assert [type(r).__name__ if isinstance(r, FetchedMessage) else r.reason for r in results] == [
        "FetchedMessage", "FetchedMessage", "FetchedMessage", "oversize", "source_deleted", "uidvalidity_changed",
        "FetchedMessage", "source_deleted"]
    assert results == singly  # the same answer, job by job, as one fetch each
    assert [r.provider_message_id for r in results if isinstance(r, FetchedMessage)] == [
        f"{inbox}:3", f"{other}:1", f"{inbox}:1", f"{other}:2"]
    assert batch == [("bodies", [1, 2]), ("bodies", [1, 3]), ("sizes", [1, 2]), ("sizes", [1, 3, 4, 99])]


def test_fetch_many_downloads_at_most_its_byte_budget_per_command_and_every_uid_once() -> None:
    budget = fetch_mod.FETCH_MANY_BYTES
    sizes = {1: budget // 2, 2: budget // 2, 3: 10, 4: budget * 2, 5: 1}
    assert fetch_mod._chunks([1, 2, 3, 4, 5], sizes) == [[1, 2], [3], [4], [5]]
    assert fetch_mod._chunks([], {}) == []


async def test_pool_reuses_connections_across_jobs(dovecot, imap_user, tmp_path):
    user, password = imap_user
    await append(dovecot.port, user, password, count=12)
    validity = await uidvalidity(dovecot.port, user, password)
    results = {}
    async with proxied(dovecot.port) as proxy:   # counts the fetcher's connections, and only those
        [account] = make_accounts(tmp_path, proxy.port, [imap_user], fetch_connections=2)
        fetcher = ImapFetcher([account])
        try:
            for uid in (1, 2, 3):   # one after the other: one connection
                results[uid] = await fetcher.fetch(job_for(account.id, validity, uid), max_size=0)
            assert len(proxy.connections) == 1

            async def one(uid):
                results[uid] = await fetcher.fetch(job_for(account.id, validity, uid), max_size=0)

            async with trio.open_nursery() as nursery:   # nine at once: at most fetch_connections
                for uid in range(4, 13):
                    nursery.start_soon(one, uid)
            assert len(proxy.connections) == 2
            assert all(isinstance(results[uid], FetchedMessage) for uid in range(1, 13))
            assert [results[uid].raw.split(b"Subject: ")[1].split(b"\r\n")[0] for uid in range(1, 13)] == \
                [f"message {n}".encode() for n in range(12)]
        finally:
            await fetcher.aclose()
        # aclose logs both pooled connections out.
        assert proxy.sent.count(b" LOGOUT\r\n") == 2


async def test_dead_pooled_connections_are_replaced_by_a_new_one(tmp_path):
    """Both pooled connections die with the server: the job is tried again on a new connection, not on the
    other dead one (which made every job in flight across an IMAP restart a retry)."""
    server = DovecotServer(users=1).start()
    try:
        user = server.take()
        [account] = make_accounts(tmp_path, server.port, [user], fetch_connections=2)
        await append(server.port, *user, count=3)
        validity = await uidvalidity(server.port, *user)
        fetcher = ImapFetcher([account])
        try:
            async with trio.open_nursery() as nursery:   # two at once: two pooled connections
                for uid in (1, 2):
                    nursery.start_soon(fetcher.fetch, job_for(account.id, validity, uid), 0)
            assert len(fetcher._pool(account.id).idle) == 2
            await trio.to_thread.run_sync(server.stop)      # the pooled connections die with the server
            await trio.to_thread.run_sync(server.start)
            result = await fetcher.fetch(job_for(account.id, validity, 3), max_size=0)
            assert isinstance(result, FetchedMessage)
        finally:
            await fetcher.aclose()
    finally:
        server.cleanup()


async def test_closing_is_bounded_however_many_connections_hang(dovecot, tmp_path):
    users = [dovecot.take() for _ in range(3)]
    async with trio.open_nursery() as nursery:
        proxy = BlackHoleProxy(dovecot.port)
        await nursery.start(proxy.run)
        accounts = make_accounts(tmp_path, proxy.port, users)
        fetcher = ImapFetcher(accounts)
        for account, (user, password) in zip(accounts, users):
            await append(dovecot.port, user, password)
            validity = await uidvalidity(dovecot.port, user, password)
            assert isinstance(await fetcher.fetch(job_for(account.id, validity, 1), max_size=0), FetchedMessage)
        proxy.freeze_existing()  # every pooled connection stops answering: each LOGOUT runs into CLOSE_TIMEOUT
        started = trio.current_time()
        await fetcher.aclose()  # the closes are shielded: measure rather than cancel
        assert trio.current_time() - started < CLOSE_TIMEOUT * 2  # one after another: three times as long
        nursery.cancel_scope.cancel()


async def test_unreachable_server_or_refused_login_is_transient(dovecot, imap_user, tmp_path):
    [down] = make_accounts(tmp_path, free_port(), [("nobody", "x")])
    [refused] = make_accounts(tmp_path, dovecot.port, [(imap_user[0], "wrong")])
    fetcher = ImapFetcher([down])
    with pytest.raises(TransientError, match="unavailable"):
        await fetcher.fetch(job_for(down.id, 1, 1), max_size=0)
    both = await fetcher.fetch_many([job_for(down.id, 1, 1), job_for(down.id, 1, 2)], max_size=0)
    assert [type(r) for r in both] == [TransientError, TransientError]  # each job of the folder gets it
    fetcher.update([refused])
    with pytest.raises(TransientError, match="AUTHENTICATIONFAILED|Authentication failed") as info:
        await fetcher.fetch(job_for(refused.id, 1, 1), max_size=0)
    assert info.value.retry_after and info.value.retry_after >= 60
    await fetcher.aclose()


# ---------------------------------------------------------------------------- post-actions


async def test_post_action_seen_only_after_commit(dovecot, imap_user, tmp_path, fetcher_factory):
    user, password = imap_user
    [account] = make_accounts(tmp_path, dovecot.port, [imap_user], post_action="seen")
    await append(dovecot.port, user, password)
    validity = await uidvalidity(dovecot.port, user, password)
    fetcher = fetcher_factory([account])
    job = job_for(account.id, validity, 1)
    assert isinstance(await fetcher.fetch(job, max_size=0), FetchedMessage)
    assert b"\\Seen" not in await flags(dovecot.port, user, password, 1)   # fetched, not yet committed
    await fetcher.after_commit(job, STORED)
    assert b"\\Seen" in await flags(dovecot.port, user, password, 1)


async def test_post_action_move_creates_the_folder_and_moves(dovecot, imap_user, tmp_path, fetcher_factory):
    user, password = imap_user
    [account] = make_accounts(tmp_path, dovecot.port, [imap_user], post_action="move:Processed")
    await append(dovecot.port, user, password, count=2)
    validity = await uidvalidity(dovecot.port, user, password)
    fetcher = fetcher_factory([account])
    for uid in (1, 2):
        job = job_for(account.id, validity, uid)
        fetched = await fetcher.fetch(job, max_size=0)
        assert isinstance(fetched, FetchedMessage)
        await fetcher.after_commit(job, STORED)

    def where(c):
        inbox = c.select_folder("INBOX", readonly=True)[b"EXISTS"]
        processed = c.select_folder("Processed", readonly=True)[b"EXISTS"]
        data = c.fetch(c.search(["ALL"]), ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]", "FLAGS"]).values()
        subjects = [d[b"BODY[HEADER.FIELDS (SUBJECT)]"] for d in data]
        seen = [d[b"FLAGS"] for d in data]
        return inbox, processed, subjects, seen

    inbox, processed, subjects, seen = await imap(dovecot.port, user, password, where)
    assert (inbox, processed) == (0, 2)
    assert sorted(s.strip() for s in subjects) == [b"Subject: message 0", b"Subject: message 1"]
    assert all(b"\\Seen" not in f for f in seen)


async def test_post_action_delete_and_uidvalidity_guard(dovecot, imap_user, tmp_path, fetcher_factory):
    user, password = imap_user
    [account] = make_accounts(tmp_path, dovecot.port, [imap_user], post_action="delete")
    await append(dovecot.port, user, password, count=2)
    validity = await uidvalidity(dovecot.port, user, password)
    fetcher = fetcher_factory([account])
    await fetcher.after_commit(job_for(account.id, validity + 1, 1), STORED)   # another folder generation: untouched
    await fetcher.after_commit(job_for(account.id, validity, 2), STORED)

    def uids(c):
        c.select_folder("INBOX", readonly=True)
        return c.search(["ALL"])

    assert await imap(dovecot.port, user, password, uids) == [1]


async def test_post_action_none_touches_nothing(dovecot, imap_user, tmp_path):
    user, password = imap_user
    await append(dovecot.port, user, password)
    validity = await uidvalidity(dovecot.port, user, password)
    async with proxied(dovecot.port) as proxy:   # would see any connection the fetcher made
        [account] = make_accounts(tmp_path, proxy.port, [imap_user])
        fetcher = ImapFetcher([account])
        try:
            await fetcher.after_commit(job_for(account.id, validity, 1), STORED)
        finally:
            await fetcher.aclose()
        assert proxy.connections == []
    assert await flags(dovecot.port, user, password, 1) - {b"\\Recent"} == set()


# ---------------------------------------------------------------------------- with the real processor


async def test_post_action_runs_only_after_the_message_is_committed(dovecot, imap_user, tmp_path, pg_dsn):
    """Processor + ImapFetcher + PostgreSQL: a failed store leaves the message where it was."""
    from inboundd.processing import Processor
    from inboundd.source import SourceRegistry
    from inboundd.providers.imap.conn import accounts_from_config
    from inboundd.store.db import Database
    from inboundd.store.migrate import migrate
    from imap_helpers import make_config

    user, password = imap_user
    cfg = make_config(tmp_path, dovecot.port, [imap_user], post_action="move:Processed",
                      prefix=f'[postgres]\ndsn = "{pg_dsn}"\n')
    await append(dovecot.port, user, password)
    validity = await uidvalidity(dovecot.port, user, password)
    db = Database(cfg.postgres)
    await db.open()
    fetcher = ImapFetcher(accounts_from_config(cfg))
    try:
        await db.run(migrate)
        sources = SourceRegistry()
        sources.register("imap", fetcher)
        processor = Processor(db, sources, cfg, "test")
        job = job_for(cfg.imap[0].id, validity, 1)

        def break_store(conn):
            conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                         " $$ BEGIN RAISE EXCEPTION 'store refused'; END $$")
            conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON inbound_messages"
                         " FOR EACH ROW EXECUTE FUNCTION refuse()")

        async def mailbox_state():
            def work(c):
                inbox = c.select_folder("INBOX", readonly=True)[b"EXISTS"]
                flags = c.get_flags([1]).get(1, ()) if inbox else ()
                processed = c.folder_status("Processed", [b"MESSAGES"])[b"MESSAGES"] if c.folder_exists("Processed") else 0
                return inbox, processed, b"\\Seen" in flags
            return await imap(dovecot.port, user, password, work)

        await db.run(break_store)
        with pytest.raises(Exception, match="store refused"):
            await processor.handle(job)
        assert await mailbox_state() == (1, 0, False)    # not committed: untouched, not even \Seen

        await db.run(lambda conn: conn.execute("DROP TRIGGER refuse ON inbound_messages"))
        outcome = await processor.handle(job)             # the retry
        assert outcome.status == "processed"
        assert await mailbox_state() == (0, 1, False)    # committed, then moved

        def stored(conn):
            return conn.execute("SELECT subject, provider_message_id FROM inbound_messages").fetchall()
        assert await db.run(stored) == [("message 0", f"{validity}:1")]
    finally:
        await fetcher.aclose()
        await db.close()
