"""The promise under the worst timing: the daemon SIGKILLed mid-job stores each email exactly once.

Two windows matter (ARCHITECTURE.md, "Idempotency"): after the ledger claim
but before the store transaction commits, and after the commit but before
the queue ack. The test holds each window open on purpose — a lock on
``inbound_messages`` stalls the store transaction, ``CLIENT PAUSE WRITE``
stalls the ack — kills the daemon inside it, and restarts it.
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
