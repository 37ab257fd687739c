"""The ledger: claim, take-over, fencing — the decisions as a table, then the SQL against real PostgreSQL."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import psycopg
import pytest

from inboundd.store import ledger
from inboundd.store.migrate import migrate

KEY = ledger.Key("t1", "acct", "imap:INBOX:7:42")
NOW = datetime(2026, 11, 22, tzinfo=timezone.utc)


def _row(status: str, owner: str | None = None, job_id: str = "j1") -> ledger.LedgerRow:
    return ledger.LedgerRow(*KEY, "imap", status, None, None, 1, owner, NOW if owner else None, job_id, None,
                            NOW, NOW, None)


@pytest.mark.parametrize(
    ("status", "owner", "verdict"),
    [
        ("processing", "me", "claimed"),
        ("processing", "other", "busy"),
        ("processed", None, "terminal"),
        ("duplicate", None, "terminal"),
        ("skipped", None, "terminal"),
        # A failed row left behind by a claim is never "ours" nor terminal: someone else's to retry.
        ("failed", None, "busy"),
    ],
)
def test_classify(status: str, owner: str | None, verdict: str) -> None:
    assert ledger.classify(_row(status, owner), "me") == verdict


@pytest.fixture
def conn(pg_dsn: str):
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        with connection.transaction():
            migrate(connection)
        yield connection


def _claim(conn: psycopg.Connection, owner: str, job_id: str = "j1", lease: float = 60.0) -> ledger.Claim:
    with conn.transaction():
        return ledger.claim(conn, KEY, provider="imap", job_id=job_id, owner=owner, lease=lease)


def _expire(conn: psycopg.Connection) -> None:
    """Simulate the holder's lease running out (its process died long ago)."""
    conn.execute(
        "UPDATE inbound_ledger SET lease_expires_at = clock_timestamp() - interval '1 second'"
        " WHERE tenant = %s AND account = %s AND identity = %s", KEY,
    )


def test_first_claim_inserts_a_processing_row_with_a_lease(conn: psycopg.Connection) -> None:
    claim = _claim(conn, "a:1")
    assert claim.verdict == "claimed"
    row = ledger.get(conn, KEY)
    assert (row.status, row.attempts, row.lease_owner, row.job_id, row.provider) == ("processing", 1, "a:1", "j1", "imap")
    remaining = conn.execute("SELECT extract(epoch FROM lease_expires_at - clock_timestamp())::float8"
                             " FROM inbound_ledger").fetchone()[0]
    assert 55 < remaining <= 60


def test_a_live_claim_is_busy_for_everyone_else(conn: psycopg.Connection) -> None:
    _claim(conn, "a:1", lease=60)
    claim = _claim(conn, "b:1", job_id="j2")
    assert claim.verdict == "busy"
    assert claim.row.lease_owner == "a:1" and claim.row.job_id == "j1"
    assert 55 < claim.lease_remaining <= 60
    assert ledger.get(conn, KEY).attempts == 1  # nothing changed


def test_an_expired_claim_is_taken_over_and_the_old_holder_is_fenced_off(conn: psycopg.Connection) -> None:
    _claim(conn, "a:1")
    _expire(conn)
    claim = _claim(conn, "b:1", job_id="j1")
    assert claim.verdict == "claimed"
    assert (claim.row.attempts, claim.row.lease_owner) == (2, "b:1")
    # The old holder wakes up: it can neither finish nor fail the row any more.
    assert ledger.finish(conn, KEY, "a:1", "processed") is False
    assert ledger.fail(conn, KEY, "a:1", "boom") is False
    assert ledger.finish(conn, KEY, "b:1", "processed", message_id=None) is True
    row = ledger.get(conn, KEY)
    assert (row.status, row.lease_owner, row.lease_expires_at) == ("processed", None, None)
    assert row.finished_at is not None


@pytest.mark.parametrize("status", ["processed", "duplicate", "skipped"])
def test_terminal_rows_are_never_taken_over(conn: psycopg.Connection, status: str) -> None:
    _claim(conn, "a:1")
    assert ledger.finish(conn, KEY, "a:1", status, reason="why")
    claim = _claim(conn, "b:1", job_id="j9")
    assert claim.verdict == "terminal"
    row = ledger.get(conn, KEY)
    assert (row.status, row.reason, row.attempts, row.job_id) == (status, "why", 1, "j1")


def test_a_failed_row_is_taken_over_at_once_and_keeps_its_last_error(conn: psycopg.Connection) -> None:
    _claim(conn, "a:1")
    assert ledger.fail(conn, KEY, "a:1", "RuntimeError: imap went away")
    row = ledger.get(conn, KEY)
    assert (row.status, row.last_error, row.lease_owner) == ("failed", "RuntimeError: imap went away", None)
    claim = _claim(conn, "b:1", job_id="j2")
    assert claim.verdict == "claimed"
    assert (claim.row.attempts, claim.row.job_id, claim.row.last_error) == (2, "j2", "RuntimeError: imap went away")


def test_finish_needs_a_terminal_status(conn: psycopg.Connection) -> None:
    _claim(conn, "a:1")
    with pytest.raises(ValueError, match="terminal"):
        ledger.finish(conn, KEY, "a:1", "failed")


def test_hold_blocks_a_take_over_until_the_holder_commits(pg_dsn: str, conn: psycopg.Connection) -> None:
    _claim(conn, "a:1")
    _expire(conn)
    taker: list[ledger.Claim] = []
    with psycopg.connect(pg_dsn) as holder:
        row = ledger.hold(holder, KEY, "a:1")  # row lock held in holder's open transaction
        assert row.lease_owner == "a:1"

        def take_over() -> None:
            with psycopg.connect(pg_dsn) as other:
                taker.append(ledger.claim(other, KEY, provider="imap", job_id="j1", owner="b:1", lease=60))

        thread = threading.Thread(target=take_over)
        thread.start()
        # The take-over waits on the row lock; show it is really waiting, then let the holder finish.
        with psycopg.connect(pg_dsn, autocommit=True) as watcher:
            for _ in range(500):
                waiting = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
                ).fetchone()[0]
                if waiting:
                    break
                thread.join(0.01)
            assert waiting == 1
        assert ledger.finish(holder, KEY, "a:1", "processed")
        holder.commit()
    thread.join(30)
    assert taker[0].verdict == "terminal"
    assert ledger.get(conn, KEY).status == "processed"


def test_concurrent_claims_have_exactly_one_winner(pg_dsn: str, conn: psycopg.Connection) -> None:
    claimers = 8
    barrier = threading.Barrier(claimers)
    verdicts: list[str] = []

    def race(n: int) -> None:
        with psycopg.connect(pg_dsn) as own:
            barrier.wait(timeout=30)
            verdicts.append(ledger.claim(own, KEY, provider="imap", job_id=f"j{n}", owner=f"o:{n}", lease=60).verdict)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(verdicts) == ["busy"] * (claimers - 1) + ["claimed"]
    assert ledger.counts(conn) == {"processing": 1}


# ---------------------------------------------------------------------------- tokens, take-back, renewal

HEX = "0123456789abcdef"


@pytest.mark.parametrize(
    ("owner", "instance", "ours"),
    [
        ("host:1a2b3c4d:" + HEX, "host:1a2b3c4d", True),
        ("host:1a2b3c4d:" + HEX, "host", False),           # "host:1a2b…" is another instance
        ("host:" + HEX, "host:1a2b3c4d", False),
        ("node:" + HEX.upper(), "node", False),            # not a token of ours: lowercase hex only
        ("node:" + HEX[:12], "node", False),               # a 12-digit token of an older build
        ("node:" + HEX + "0", "node", False),
        ("node:" + HEX, "node", True),
        (None, "node", False),
    ],
)
def test_is_instance_token(owner: str | None, instance: str, ours: bool) -> None:
    assert ledger.is_instance_token(owner, instance) is ours


def test_owner_token_refuses_a_suffix_that_would_be_ambiguous() -> None:
    assert ledger.owner_token("n", HEX) == "n:" + HEX
    for bad in ("xyz", HEX[:15], HEX.upper(), HEX[:15] + ":"):
        with pytest.raises(ValueError, match="hex digits"):
            ledger.owner_token("n", bad)


def _claim_key(conn: psycopg.Connection, identity: str, owner: str, lease: float = 60.0) -> ledger.Claim:
    with conn.transaction():
        return ledger.claim(conn, ledger.Key("t1", "acct", identity), provider="imap", job_id=f"j-{identity}",
                            owner=owner, lease=lease)


def test_take_back_releases_only_the_rows_of_earlier_lives_of_this_instance(conn: psycopg.Connection) -> None:
    old_life, this_life = "node:aaaaaaaa", "node:bbbbbbbb"
    _claim_key(conn, "old-1", old_life + "00000001")
    _claim_key(conn, "old-2", old_life + "00000002")
    _claim_key(conn, "current", this_life + "00000003")
    _claim_key(conn, "other-instance", "node:x:" + HEX)        # instance "node:x" shares the prefix
    _claim_key(conn, "done", old_life + "00000004")
    assert ledger.finish(conn, ledger.Key("t1", "acct", "done"), old_life + "00000004", "processed")

    with conn.transaction():
        taken = ledger.take_back(conn, "node", keep=this_life, error="holder died: taken back at start")
    assert sorted((row.identity, row.lease_owner) for row in taken) == [
        ("old-1", old_life + "00000001"), ("old-2", old_life + "00000002")]
    statuses = dict(conn.execute("SELECT identity, status FROM inbound_ledger").fetchall())
    assert statuses == {"old-1": "failed", "old-2": "failed", "current": "processing",
                        "other-instance": "processing", "done": "processed"}
    row = ledger.get(conn, ledger.Key("t1", "acct", "old-1"))
    assert (row.last_error, row.lease_owner, row.lease_expires_at) == ("holder died: taken back at start", None, None)
    # The old holder, were it only paused, can no longer write; the next claim takes the row at once.
    assert not ledger.finish(conn, ledger.Key("t1", "acct", "old-1"), old_life + "00000001", "processed")
    claim = _claim_key(conn, "old-1", this_life + "00000005")
    assert (claim.verdict, claim.row.attempts) == ("claimed", 2)


def test_a_claim_takes_over_a_known_dead_holder_at_once_and_only_that_one(conn: psycopg.Connection) -> None:
    _claim(conn, "n:" + HEX, lease=60)
    with conn.transaction():   # another token is named dead: the live lease still counts
        claim = ledger.claim(conn, KEY, provider="imap", job_id="j1", owner="n:" + "1" * 16, lease=60,
                             dead_holder="n:" + "2" * 16)
    assert claim.verdict == "busy"
    with conn.transaction():
        claim = ledger.claim(conn, KEY, provider="imap", job_id="j1", owner="n:" + "1" * 16, lease=60,
                             dead_holder="n:" + HEX)
    assert (claim.verdict, claim.row.attempts, claim.row.lease_owner) == ("claimed", 2, "n:" + "1" * 16)
    assert not ledger.fail(conn, KEY, "n:" + HEX, "late write of the dead holder")


def test_renew_extends_the_leases_it_still_holds_in_one_statement(pg_dsn: str, conn: psycopg.Connection) -> None:
    _claim_key(conn, "a", "n:" + "a" * 16, lease=5)
    _claim_key(conn, "b", "n:" + "b" * 16, lease=5)
    _claim_key(conn, "c", "n:" + "c" * 16, lease=5)
    assert ledger.finish(conn, ledger.Key("t1", "acct", "c"), "n:" + "c" * 16, "processed")
    with psycopg.connect(pg_dsn) as storing:   # "b" is being stored: its row is locked
        assert ledger.hold(storing, ledger.Key("t1", "acct", "b"), "n:" + "b" * 16) is not None
        with conn.transaction():
            renewed = ledger.renew(conn, ["n:" + "a" * 16, "n:" + "b" * 16, "n:" + "c" * 16], lease=60)
        storing.rollback()
    assert renewed == ["n:" + "a" * 16]        # "b" skipped (not waited for), "c" no longer held
    remaining = dict(conn.execute(
        "SELECT identity, extract(epoch FROM lease_expires_at - clock_timestamp())::float8 FROM inbound_ledger"
        " WHERE status = 'processing'").fetchall())
    assert 55 < remaining["a"] <= 60 and remaining["b"] <= 5
    assert ledger.renew(conn, [], lease=60) == []


def _insert(conn: psycopg.Connection, account: str, identity: str, status: str, reason: str | None,
            minutes_ago: float) -> None:
    conn.execute(
        "INSERT INTO inbound_ledger (tenant, account, identity, provider, status, reason, job_id, updated_at)"
        " VALUES ('t1', %s, %s, 'imap', %s, %s, 'j', now() - make_interval(secs => %s))",
        (account, identity, status, reason, minutes_ago * 60),
    )


def test_reports_count_by_status_account_and_window(conn: psycopg.Connection) -> None:
    assert ledger.exists(conn)
    for n, (status, reason, minutes_ago) in enumerate([
        ("processed", None, 0.1), ("processed", None, 3), ("duplicate", "message_id", 10),
        ("skipped", "oversize", 30), ("failed", None, 0.1), ("processing", None, 0.1), ("processed", None, 120),
    ]):
        _insert(conn, "a", f"id{n}", status, reason, minutes_ago)
    _insert(conn, "b", "id0", "skipped", "oversize", 0.1)

    assert ledger.counts(conn) == {"processed": 3, "duplicate": 1, "skipped": 2, "failed": 1, "processing": 1}
    assert ledger.counts(conn, account="b") == {"skipped": 1}
    assert ledger.counts(conn, account="nobody") == {}
    assert sorted(ledger.recent_outcomes(conn, minutes=60), key=str) == sorted([
        ("processed", None, 2), ("duplicate", "message_id", 1), ("skipped", "oversize", 2), ("failed", None, 1),
        ("processing", None, 1)], key=str)
    # Terminal rows only (processed, duplicate, skipped), each window counted on its own.
    assert ledger.finished_within(conn, (1, 5, 15, 60)) == [2, 3, 4, 5]
    assert ledger.finished_within(conn, ()) == []


def test_an_unmigrated_database_has_no_ledger(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as fresh:
        assert not ledger.exists(fresh)
