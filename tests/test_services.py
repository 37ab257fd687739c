"""The test bed itself: private servers answer, and stop without leaving a process."""

from __future__ import annotations

import psycopg
import redis
from imapclient import IMAPClient

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
    import os
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
