"""Fixtures: private real servers (Redis, PostgreSQL, Dovecot) for the whole suite.

Session-scoped servers are started once and stopped at the end; per-test
fixtures hand each test a clean slate (a flushed Redis, a new database, a new
mailbox user). Tests never touch the machine's own services.
"""

from __future__ import annotations

import itertools
import sys
import uuid
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from services import DovecotServer, PostgresServer, RedisServer  # noqa: E402

_counter = itertools.count()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared private Redis, flushed for this test."""
    import redis

    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()  # a previous test stopped it
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def make_redis(tmp_path: Path) -> Iterator:
    """Factory of extra private Redis servers this test may stop and restart."""
    servers: list[RedisServer] = []

    def make(persist: bool = False) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}", persist=persist).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def pg_dsn(pg_server: PostgresServer) -> str:
    """A new, empty database on the private PostgreSQL."""
    return pg_server.create_database(f"t{next(_counter)}_{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator:
    """The daemon's PostgreSQL pool (inboundd.store.db.Database) on a new, migrated database."""
    from inboundd.config import PostgresConfig
    from inboundd.store.db import Database
    from inboundd.store.migrate import migrate

    database = Database(PostgresConfig(dsn=pg_dsn, pool_min=1, pool_max=8))
    await database.open()
    await database.run(migrate)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    """The suite's private Dovecot, with mailboxes made up front (see :meth:`DovecotServer.take`)."""
    server = DovecotServer(users=400).start()
    yield server
    server.cleanup()


@pytest.fixture
def imap_user(dovecot: DovecotServer) -> tuple[str, str]:
    """A fresh mailbox (user, password) on the private Dovecot, usable at once."""
    return dovecot.take()


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator:
    """Factory of real daemon subprocesses (daemon_harness.DaemonProcess), all stopped after the test."""
    from daemon_harness import DaemonProcess

    started: list[DaemonProcess] = []

    def make(redis_url: str, pg_dsn: str, name: str = "d", **kwargs) -> DaemonProcess:
        process = DaemonProcess(tmp_path / name, redis_url=redis_url, pg_dsn=pg_dsn, **kwargs)
        started.append(process)
        return process

    yield make
    for process in started:
        process.close()


@pytest.fixture
async def rio(redis_url: str) -> AsyncIterator:
    """The daemon's Redis pool (inboundd.redisio.RedisIO) on the private Redis."""
    from inboundd.config import RedisConfig
    from inboundd.redisio import RedisIO

    io = RedisIO.from_config(RedisConfig(url=redis_url, pool_size=32))
    yield io
    await io.close()


@pytest.fixture
def client(redis_url: str) -> Iterator:
    """A plain redis-py client on the private Redis, to look at what the daemon wrote."""
    import redis

    with redis.Redis.from_url(redis_url) as plain:
        yield plain


@pytest.fixture
def fake_google() -> Iterator:
    """The loopback fake of Google's endpoints (tests/google_fake.py), stopped after the test."""
    from google_fake import FakeGoogle

    with FakeGoogle() as server:
        yield server


@pytest.fixture
async def google_clients() -> AsyncIterator:
    """The Gmail provider's shared httpx clients, closed after the test."""
    from inboundd.providers.google.accounts import HttpClients

    clients = HttpClients()
    yield clients
    await clients.aclose()
