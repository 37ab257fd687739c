"""The whole product on real servers: Dovecot → IDLE listener → Redis → consumer → PostgreSQL.

Each test runs the daemon as a subprocess (as systemd would) against the
private Dovecot, Redis and PostgreSQL, and tells one operator story.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psycopg
from imapclient import IMAPClient

from inboundd.store import ledger

from daemon_harness import imap_section, listener_states, stored, wait_idle
from imap_helpers import append_subjects
from waiting import wait_for


def test_append_is_stored_once_and_never_marked_seen(daemon_factory, redis_url, pg_dsn, dovecot, imap_user,
                                                      tmp_path: Path) -> None:
    user, password = imap_user
    daemon = daemon_factory(redis_url, pg_dsn, extra_config=imap_section(tmp_path, dovecot.port, user, password))
    daemon.start()
    wait_idle(daemon)
    append_subjects(dovecot.port, user, password, ["Printer out of toner"])
    wait_for(lambda: stored(pg_dsn), 30, what="the message in inbound_messages")
    assert stored(pg_dsn) == [("Printer out of toner", "ada@example.com")]
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT status FROM inbound_ledger").fetchall() == [("processed",)]
    with IMAPClient("127.0.0.1", port=dovecot.port, ssl=False) as client:
        client.login(user, password)
        client.select_folder("INBOX", readonly=True)
        flags = client.get_flags(client.search("ALL"))
    assert all(b"\\Seen" not in f for f in flags.values()), flags


def test_daemon_stopped_while_100_messages_arrive(daemon_factory, redis_url, pg_dsn, dovecot, imap_user,
                                                  tmp_path: Path) -> None:
    user, password = imap_user
    daemon = daemon_factory(redis_url, pg_dsn, extra_config=imap_section(tmp_path, dovecot.port, user, password))
    daemon.start()
    wait_idle(daemon)
    append_subjects(dovecot.port, user, password, ["before"])
    wait_for(lambda: len(stored(pg_dsn)) == 1, 30, what="the first message stored")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(timeout=30) == 0
    subjects = [f"while down {n}" for n in range(100)]
    append_subjects(dovecot.port, user, password, subjects)
    daemon.start(wait_ready=False)
    daemon.wait_ready(after=1)
    wait_for(lambda: len(stored(pg_dsn)) >= 101, 60, what="all 100 messages stored after the restart")
    rows = stored(pg_dsn)
    assert sorted(subject for subject, _ in rows) == sorted(["before"] + subjects)
    with psycopg.connect(pg_dsn) as conn:
        assert ledger.counts(conn) == {"processed": 101}


def test_sigterm_while_idling_logs_out_within_the_grace(daemon_factory, redis_url, pg_dsn, dovecot, imap_user,
                                                        tmp_path: Path) -> None:
    user, password = imap_user
    daemon = daemon_factory(redis_url, pg_dsn, daemon_section='consumers = 1\nshutdown_grace = "5s"',
                            extra_config=imap_section(tmp_path, dovecot.port, user, password))
    daemon.start()
    wait_idle(daemon)
    begin = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(timeout=15) == 0
    assert time.monotonic() - begin < 5

    def logged_out() -> bool:
        lines = [line for line in dovecot.log.read_text(errors="replace").splitlines() if f"imap({user})" in line]
        return any("Logged out" in line for line in lines)

    wait_for(logged_out, 10, what=f"Dovecot to log LOGOUT for {user}")


def test_two_daemons_on_one_mailbox_one_listens_and_the_other_takes_over(
        daemon_factory, redis_url, pg_dsn, dovecot, imap_user, tmp_path: Path) -> None:
    user, password = imap_user
    section = imap_section(tmp_path, dovecot.port, user, password, lease='"2s"')
    first = daemon_factory(redis_url, pg_dsn, name="a", extra_config=section).start()
    second = daemon_factory(redis_url, pg_dsn, name="b", extra_config=section).start()

    def roles() -> tuple[str, str]:
        return listener_states(first)[0], listener_states(second)[0]

    wait_for(lambda: sorted(roles()) == ["idle", "standby"], 30, what="one owner idling and one standby")
    owner, standby = (first, second) if roles()[0] == "idle" else (second, first)
    append_subjects(dovecot.port, user, password, [f"first {n}" for n in range(10)])
    wait_for(lambda: len(stored(pg_dsn)) == 10, 30, what="10 messages stored")
    owner.kill()
    killed_at = time.monotonic()
    append_subjects(dovecot.port, user, password, [f"second {n}" for n in range(10)])
    wait_for(lambda: listener_states(standby) == ["idle"], 15, what="the standby to take over")
    assert time.monotonic() - killed_at < 2 + 5  # the lease, plus a reconnect
    wait_for(lambda: len(stored(pg_dsn)) >= 20, 30, what="20 messages stored")
    subjects = sorted(subject for subject, _ in stored(pg_dsn))
    assert subjects == sorted([f"first {n}" for n in range(10)] + [f"second {n}" for n in range(10)])


def test_sighup_adds_and_removes_a_mailbox(daemon_factory, redis_url, pg_dsn, dovecot, imap_user,
                                           tmp_path: Path) -> None:
    user, password = imap_user
    daemon = daemon_factory(redis_url, pg_dsn).start()
    assert listener_states(daemon) == []
    daemon.write_config(daemon.config_text(extra=imap_section(tmp_path, dovecot.port, user, password)))
    daemon.signal(signal.SIGHUP)
    wait_idle(daemon)
    append_subjects(dovecot.port, user, password, ["after reload"])
    wait_for(lambda: stored(pg_dsn) == [("after reload", "ada@example.com")], 30, what="the message stored")
    daemon.write_config(daemon.config_text(extra=""))
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: listener_states(daemon) == [], 20, what="the listener removed")
    assert daemon.get("/readyz").status_code == 200
