"""An outage is logged by its changes of state: down, still down once per interval with the count, up."""

from __future__ import annotations

import io
import json
import logging

import pytest

from inboundd import log
from inboundd.outage import Outage, one_line
from waiting import eventually


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines():
    stream = io.StringIO()
    log.configure("debug", "json", stream=stream)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        log.configure("info", "text")


def test_a_flood_of_failures_is_three_kinds_of_line(lines) -> None:
    clock = Clock()
    outage = Outage("redis", log.get_logger("test"), every=60.0, now=clock)
    outage.succeeded()                                       # up and staying up: nothing to say
    for second in range(150):                                # three consumers failing every second
        clock.now = 100.0 + second
        for _ in range(3):
            outage.failed(ConnectionRefusedError(111, "Connection refused"))
    assert outage.down and outage.last_error == "ConnectionRefusedError: [Errno 111] Connection refused"
    clock.now = 251.0
    outage.succeeded()
    outage.succeeded()
    records = lines()
    assert [(r["event"], r["level"]) for r in records] == [
        ("redis.down", "warning"), ("redis.still_down", "warning"), ("redis.still_down", "warning"),
        ("redis.up", "info")]
    down, first, second, up = records
    assert down["error"] == "ConnectionRefusedError: [Errno 111] Connection refused"
    assert (first["failures"], first["since_last"], first["down_for"]) == (181, 180, 60.0)
    assert (second["failures"], second["since_last"], second["down_for"]) == (361, 180, 120.0)
    assert (up["failures"], up["down_for"]) == (450, 151.0) and up["last_error"] == down["error"]
    assert not outage.down


def test_a_second_outage_is_news_again(lines) -> None:
    clock = Clock()
    outage = Outage("postgres", log.get_logger("test"), now=clock)
    outage.failed("refused")
    outage.succeeded()
    clock.now += 1
    outage.failed("password authentication failed for user \"inboundd\"")
    assert [(r["event"], r.get("error")) for r in lines()] == [
        ("postgres.down", "refused"), ("postgres.up", None),
        ("postgres.down", 'password authentication failed for user "inboundd"')]


def test_errors_become_one_line() -> None:
    multi = OSError('connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused\n'
                    "\tIs the server running on that host and accepting TCP/IP connections?")
    assert one_line(multi) == ('OSError: connection failed: connection to server at "127.0.0.1", port 1 failed: '
                               "Connection refused Is the server running on that host and accepting TCP/IP "
                               "connections?")
    assert one_line(TimeoutError()) == "TimeoutError"
    assert one_line("  two\n lines ") == "two lines"


async def test_the_pool_s_retry_lines_become_the_outage(pg_server, caplog) -> None:
    """psycopg-pool's own lines about failed background connections are taken out of its log."""
    from inboundd.config import PostgresConfig
    from inboundd.store.db import Database
    from services import free_port

    db = Database(PostgresConfig(dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/x", pool_min=2,
                                 connect_timeout=1.0))
    caplog.set_level(logging.DEBUG)
    await db.open()
    try:   # the pool's workers retry in the background: wait until several attempts failed
        await eventually(lambda: db.pool.get_stats().get("connections_errors", 0) >= 4, 20,
                         what="four failed connection attempts")
    finally:
        await db.close()
    pool_lines = [r for r in caplog.records if r.name == "psycopg.pool" and r.levelno >= logging.WARNING]
    ours = [r.getMessage() for r in caplog.records if r.name == "inboundd.store"]
    assert pool_lines == []
    assert ours == ["postgres.down"] and db.outage.down and "Connection refused" in db.outage.last_error
