"""The promise under the worst timing: the daemon SIGKILLed mid-job stores each email exactly once.

Two windows matter (ARCHITECTURE.md, "Idempotency"): after the ledger claim
but before the store transaction commits, and after the commit but before
the queue ack. The test holds each window open on purpose — a lock on
``inbound_messages`` stalls the store transaction, ``CLIENT PAUSE WRITE``
stalls the ack — kills the daemon inside it, and restarts it. Both windows
are tested for one job and for a batch (three jobs claimed and stored
together).
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import redis

from daemon_harness import DaemonProcess, TableLock, imap_section, wait_idle
from imap_helpers import append_subjects
from waiting import wait_for

FAST_RECOVERY = """
[queue]
lease = "2s"
reclaim_interval = "200ms"
backoff_base = "100ms"
[processing]
fetch_timeout = "1s"
lease = "2s"
"""


def rows(pg_dsn: str, subject: str) -> list[tuple[str, int]]:
    """(ledger status, ledger attempts) of every stored message with *subject*."""
    with psycopg.connect(pg_dsn) as conn:
        return conn.execute(
            "SELECT l.status, l.attempts FROM inbound_messages m"
            " JOIN inbound_ledger l USING (tenant, account, identity) WHERE m.subject = %s",
            (subject,),
        ).fetchall()


def ledger_status(pg_dsn: str) -> list[str]:
    with psycopg.connect(pg_dsn) as conn:
        return [status for (status,) in conn.execute("SELECT status FROM inbound_ledger ORDER BY created_at")]


def restart(daemon: DaemonProcess, times_ready: int) -> None:
    daemon.start(wait_ready=False)
    daemon.wait_ready(after=times_ready)


def test_sigkill_before_commit_and_before_ack_stores_each_message_once(
        daemon_factory, redis_url, pg_dsn, dovecot, imap_user, tmp_path: Path) -> None:
    user, password = imap_user
    daemon = daemon_factory(redis_url, pg_dsn, daemon_section="consumers = 1",
                            extra_config=imap_section(tmp_path, dovecot.port, user, password) + FAST_RECOVERY)
    daemon.start()
    wait_idle(daemon)

    # Window 1: claimed in the ledger, store transaction not committed.
    stalled = TableLock(pg_dsn, "inbound_messages", "SHARE")
    try:
        append_subjects(dovecot.port, user, password, ["killed before commit"])
        wait_for(lambda: stalled.waiters() >= 1, 30, what="the store transaction waiting inside the lock")
        assert ledger_status(pg_dsn) == ["processing"]
        daemon.kill()
    finally:
        stalled.release()
    restart(daemon, times_ready=1)
    wait_for(lambda: rows(pg_dsn, "killed before commit"), 30, what="the message stored after the restart")
    [(status, attempts)] = rows(pg_dsn, "killed before commit")
    assert status == "processed" and attempts == 2  # a retry that stored it, never a "duplicate"

    # Window 2: committed, queue ack not yet done.
    with redis.Redis.from_url(redis_url) as client:
        stalled = TableLock(pg_dsn, "inbound_messages", "SHARE")
        try:
            append_subjects(dovecot.port, user, password, ["killed before ack"])
            wait_for(lambda: stalled.waiters() >= 1, 30, what="the second store transaction waiting")
            client.execute_command("CLIENT", "PAUSE", "60000", "WRITE")  # the ack cannot reach Redis
        finally:
            stalled.release()
        try:
            wait_for(lambda: rows(pg_dsn, "killed before ack"), 30, what="the commit of the second message")
            daemon.kill()
        finally:
            client.execute_command("CLIENT", "UNPAUSE")
        assert client.xlen("{inboundd}:stream") == 1  # still queued: the ack never happened
        restart(daemon, times_ready=2)
        wait_for(lambda: client.xlen("{inboundd}:stream") == 0, 30, what="the redelivered job acked")
    assert rows(pg_dsn, "killed before ack") == [("processed", 1)]
    assert rows(pg_dsn, "killed before commit") == [("processed", 2)]
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM inbound_messages").fetchone()[0] == 2
    assert any(e.get("reason") == "ledger_processed" for e in daemon.events("job.duplicate"))


def claims(pg_dsn: str, prefix: str) -> list[tuple[str, int, int]]:
    """(ledger status, attempts, stored copies) of the messages whose subject starts with *prefix*, and
    how many claim transactions first created their ledger rows (``created_at`` is the transaction's start)."""
    with psycopg.connect(pg_dsn) as conn:
        return conn.execute(
            "SELECT l.status, l.attempts, (SELECT count(*) FROM inbound_messages c WHERE c.subject = m.subject)"
            " FROM inbound_messages m JOIN inbound_ledger l USING (tenant, account, identity)"
            " WHERE m.subject LIKE %s ORDER BY m.subject", (prefix + "%",)).fetchall()


def claim_transactions(pg_dsn: str, prefix: str) -> int:
    with psycopg.connect(pg_dsn) as conn:
        return conn.execute(
            "SELECT count(DISTINCT l.created_at) FROM inbound_messages m"
            " JOIN inbound_ledger l USING (tenant, account, identity) WHERE m.subject LIKE %s",
            (prefix + "%",)).fetchone()[0]


def stalled_batch(daemon: DaemonProcess, pg_dsn: str, dovecot, user: str, password: str, prefix: str) -> TableLock:
    """Three messages arrive while the daemon is stopped; started again, it catches up with one enqueue,
    its consumer claims the three as one batch, and the batch's store transaction waits in a lock."""
    daemon.stop()
    append_subjects(dovecot.port, user, password, [f"{prefix} {n}" for n in range(3)])
    stalled = TableLock(pg_dsn, "inbound_messages", "SHARE")
    try:
        restart(daemon, times_ready=1)
        wait_for(lambda: stalled.waiters() >= 1, 30, what="the batch's store transaction waiting inside the lock")
        assert ledger_status(pg_dsn).count("processing") == 3
    except BaseException:
        stalled.release()
        raise
    return stalled


def idle_daemon(daemon_factory, redis_url: str, pg_dsn: str, dovecot, user: str, password: str,
                tmp_path: Path) -> DaemonProcess:
    """One consumer, fast recovery, listening to *user*'s INBOX, started and idle."""
    daemon = daemon_factory(redis_url, pg_dsn, daemon_section="consumers = 1",
                            extra_config=imap_section(tmp_path, dovecot.port, user, password) + FAST_RECOVERY)
    daemon.start()
    wait_idle(daemon)
    return daemon


def test_sigkill_between_batch_claim_and_batch_commit_stores_each_message_once(
        daemon_factory, redis_url, pg_dsn, dovecot, imap_user, tmp_path: Path) -> None:
    user, password = imap_user
    daemon = idle_daemon(daemon_factory, redis_url, pg_dsn, dovecot, user, password, tmp_path)
    stalled = stalled_batch(daemon, pg_dsn, dovecot, user, password, "batch before commit")
    try:
        daemon.kill()
    finally:
        stalled.release()
    restart(daemon, times_ready=2)
    wait_for(lambda: len(claims(pg_dsn, "batch before commit")) == 3, 30, what="the batch stored after the restart")
    # Each a retry that stored it (never a "duplicate"), one copy each.
    assert claims(pg_dsn, "batch before commit") == [("processed", 2, 1)] * 3
    assert claim_transactions(pg_dsn, "batch before commit") == 1  # the three were claimed as one batch


def test_sigkill_after_batch_commit_before_ack_stores_each_message_once(
        daemon_factory, redis_url, pg_dsn, dovecot, imap_user, tmp_path: Path) -> None:
    user, password = imap_user
    daemon = idle_daemon(daemon_factory, redis_url, pg_dsn, dovecot, user, password, tmp_path)
    with redis.Redis.from_url(redis_url) as client:
        stalled = stalled_batch(daemon, pg_dsn, dovecot, user, password, "batch before ack")
        try:
            client.execute_command("CLIENT", "PAUSE", "60000", "WRITE")  # the acks cannot reach Redis
        finally:
            stalled.release()
        try:
            wait_for(lambda: len(claims(pg_dsn, "batch before ack")) == 3, 30, what="the batch's commit")
            daemon.kill()
        finally:
            client.execute_command("CLIENT", "UNPAUSE")
        assert client.xlen("{inboundd}:stream") == 3  # still queued: the acks never happened
        restart(daemon, times_ready=2)
        wait_for(lambda: client.xlen("{inboundd}:stream") == 0, 30, what="the redelivered jobs acked")
    assert claims(pg_dsn, "batch before ack") == [("processed", 1, 1)] * 3
    assert claim_transactions(pg_dsn, "batch before ack") == 1
    assert sum(e.get("reason") == "ledger_processed" for e in daemon.events("job.duplicate")) == 3
