"""The PostgreSQL pool from trio (``inboundd.store.db``): cancellation and bounds, against a real server."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
import trio

from inboundd.config import PostgresConfig
from inboundd.store.db import TCP_DEFAULTS, TIMEOUT_MARGIN, Database, DatabaseTimeout

from daemon_harness import TableLock
from imap_helpers import BlackHoleProxy
from waiting import eventually


@pytest.fixture
async def table(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE marks (n int)")
    return pg_dsn


async def test_a_call_cancelled_while_waiting_for_a_connection_never_runs(table: str) -> None:
    db = Database(PostgresConfig(dsn=table, pool_min=1, pool_max=1, connect_timeout=10))
    await db.open()
    try:
        release = trio.Event()
        holding = trio.Event()

        def hold(conn: psycopg.Connection) -> None:
            holding_token.run_sync_soon(holding.set)
            trio.from_thread.run(release.wait, trio_token=holding_token)

        holding_token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(db.run, hold)
            await holding.wait()
            with trio.move_on_after(0.2) as scope:   # waits for the only connection, then gives up
                await db.run(lambda conn: conn.execute("INSERT INTO marks VALUES (1)"))
            assert scope.cancelled_caught
            release.set()
        # Its thread got the connection after the caller left: it must not have run the insert.
        await trio.sleep(0.3)
        assert await db.run(lambda conn: conn.execute("SELECT count(*) FROM marks").fetchone()[0]) == 0
    finally:
        await db.close()


async def test_a_timeout_bounds_lock_waits_on_the_server(table: str) -> None:
    db = Database(PostgresConfig(dsn=table, pool_min=1, pool_max=2))
    await db.open()
    lock = TableLock(table, "marks")
    try:
        started = trio.current_time()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            await db.run(lambda conn: conn.execute("INSERT INTO marks VALUES (1)"), timeout=0.5)
        assert trio.current_time() - started < 0.5 + TIMEOUT_MARGIN
        # The bound is the transaction's own (SET LOCAL): the next call on the connection has none.
        assert await db.run(lambda conn: conn.execute("SHOW lock_timeout").fetchone()[0]) == "0"
    finally:
        lock.release()
        await db.close()


@asynccontextmanager
async def through_a_proxy(pg_server, table: str) -> AsyncIterator[tuple[BlackHoleProxy, Database]]:
    """A pool (one connection kept, ready) reaching PostgreSQL through a proxy the test can freeze."""
    async with trio.open_nursery() as nursery:
        proxy = BlackHoleProxy(pg_server.port)
        await nursery.start(proxy.run)
        db = Database(PostgresConfig(dsn=table.replace(f":{pg_server.port}/", f":{proxy.port}/"),
                                     pool_min=1, pool_max=2, connect_timeout=2))
        await db.open()
        try:
            await db.ping(timeout=2)
            yield proxy, db
        finally:
            proxy.resume()
            with trio.move_on_after(10):
                await db.close()
            nursery.cancel_scope.cancel()


async def test_a_server_that_stops_answering_is_given_up_on_in_time(pg_server, table: str) -> None:
    async with through_a_proxy(pg_server, table) as (proxy, db):
        proxy.freeze_existing()   # the pooled connection now swallows everything
        started = trio.current_time()
        with pytest.raises(DatabaseTimeout, match="did not answer"):
            await db.run(lambda conn: conn.execute("SELECT 1"), timeout=0.5)
        assert trio.current_time() - started < 0.5 + TIMEOUT_MARGIN + 2.5   # + the bounded cancel


async def test_a_ping_that_waits_for_no_cancel_returns_at_its_callers_deadline(pg_server, table: str) -> None:
    async with through_a_proxy(pg_server, table) as (proxy, db):
        proxy.freeze()   # the server stops answering: a cancel request would not get through either
        started = trio.current_time()
        with trio.move_on_after(0.5):
            await db.ping(cancel_wait=0)
        assert trio.current_time() - started < 0.5 + 0.3   # not + CANCEL_TIMEOUT
        proxy.resume()   # the abandoned SELECT 1 ends, rolled back, and its connection is usable again
        for _ in range(3):
            await db.ping(timeout=2)


async def test_check_replaces_connections_the_server_dropped(table: str) -> None:
    db = Database(PostgresConfig(dsn=table, pool_min=2, pool_max=2))
    await db.open()
    try:
        await eventually(lambda: db.pool.get_stats().get("pool_available", 0) == 2, 10, "two pooled connections")
        with psycopg.connect(table, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE application_name = 'inboundd' AND pid <> pg_backend_pid()")
        await db.check(timeout=5)
        for _ in range(4):   # every pooled connection works again
            await db.ping(timeout=2)
    finally:
        await db.close()


async def test_connections_ask_for_keepalives_and_a_tcp_user_timeout_unless_the_dsn_sets_its_own(
        pg_dsn: str) -> None:
    """A vanished server is noticed by TCP in ~30 s, not the kernel's ~15 min; the operator's DSN wins."""
    db = Database(PostgresConfig(dsn=pg_dsn, pool_min=1, pool_max=1))
    await db.open()
    try:
        pooled = await db.run(lambda conn: conn.info.get_parameters())
        listening = await trio.to_thread.run_sync(lambda: _parameters_of(db.connect()))
    finally:
        await db.close()
    for parameters in (pooled, listening):
        assert {key: parameters.get(key) for key in TCP_DEFAULTS} == TCP_DEFAULTS

    own = Database(PostgresConfig(dsn=make_conninfo(pg_dsn, keepalives_idle=60), pool_min=1, pool_max=1))
    await own.open()
    try:
        parameters = await own.run(lambda conn: conn.info.get_parameters())
    finally:
        await own.close()
    assert parameters["keepalives_idle"] == "60"
    assert parameters["tcp_user_timeout"] == TCP_DEFAULTS["tcp_user_timeout"]


def _parameters_of(conn: psycopg.Connection) -> dict[str, str]:
    with conn:
        return conn.info.get_parameters()
