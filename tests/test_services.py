"""The test bed itself: private servers answer, and stop without leaving a process."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
import redis
from imapclient import IMAPClient

from inboundd.trial import servers
from services import PostgresServer, RedisServer


def test_private_redis_is_not_the_machines(redis_url: str) -> None:
    assert not redis_url.startswith("redis://127.0.0.1:6379")
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping()
        assert client.dbsize() == 0


def test_redis_stop_leaves_nothing(tmp_path) -> None:
    server = RedisServer(tmp_path).start()
    pid = server.process.pid
    server.stop()
    assert server.process is None
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive


def test_private_postgres_gives_each_test_a_database(pg_dsn: str, pg_server: PostgresServer) -> None:
    assert f":{pg_server.port}/" in pg_dsn and pg_server.port != 5432
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0


def test_private_dovecot_serves_a_fresh_mailbox(dovecot, imap_user) -> None:
    user, password = imap_user
    with IMAPClient("127.0.0.1", port=dovecot.port, ssl=False, timeout=10) as client:
        client.login(user, password)
        assert b"IDLE" in client.capabilities()
        client.append("INBOX", b"Subject: hi\r\n\r\nhello\r\n")
        assert client.select_folder("INBOX")[b"EXISTS"] == 1


# --------------------------------------------------------------------------- leftovers of a dead owner


@pytest.mark.parametrize("text, expected", [
    ("123 4567\n", (123, "4567")),
    ("123 4567", (123, "4567")),
    ("", None),
    ("123\n", None),
    ("abc 4567\n", None),
    ("123 4567 89\n", None),
    ("-1 4567\n", None),
])
def test_pid_file_parsing(text: str, expected: tuple[int, str] | None) -> None:
    assert servers.parse_pid_file(text) == expected


def test_a_live_process_has_a_start_time_and_a_reaped_one_has_none() -> None:
    assert servers.process_start_time(os.getpid()) is not None
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert servers.process_start_time(child.pid) is None


def test_a_server_its_owner_left_running_is_recognised_and_stopped(tmp_path) -> None:
    first = RedisServer(tmp_path).start()
    pid = first.process.pid
    assert first.leftover() is None  # its own server is no leftover
    # A new owner of the same directory (the first one died without stopping it).
    second = RedisServer(tmp_path)
    try:
        assert second.leftover() == pid
        assert second.stop_leftover() == pid
        assert servers.process_start_time(pid) is None
        assert not second.pid_file.exists()
        assert second.leftover() is None and second.stop_leftover() is None
    finally:
        first.stop()


def test_a_recycled_pid_is_not_taken_for_a_leftover(tmp_path) -> None:
    server = RedisServer(tmp_path)
    start_time = servers.process_start_time(os.getpid())
    server.pid_file.write_text(f"{os.getpid()} {int(start_time) + 1}\n")  # our pid, another process's start
    assert server.leftover() is None
    assert server.stop_leftover() is None  # and nothing was signalled: we still run
    server.pid_file.write_text("not a pid file\n")
    assert server.leftover() is None


def test_a_missing_program_names_its_debian_package() -> None:
    with pytest.raises(servers.MissingPrerequisite, match=r"^no-such-server not found: install the Debian "
                                                          r"package 'no-such-package'"):
        servers.require_binary("no-such-server", "no-such-package")


def test_the_suite_fails_a_test_whose_server_program_is_missing(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=r"install the Debian package 'redis-server'.*scripts/setup"):
        RedisServer(tmp_path)
