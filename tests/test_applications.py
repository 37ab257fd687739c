"""docs/applications.md stays true: its column tables are the tables' columns, and its consumer example works.

The example is taken from the document as it is and run as a program against
a real store that the real ``Processor`` fills (the provider is the
in-process ``FakeSource`` of tests/fakes.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import trio

from inboundd.config import PostgresConfig
from inboundd.store.db import Database
from inboundd.store.migrate import migrate
from fakes import ACCOUNT, FakeSource, job_for, mime, processor
from waiting import wait_for

DOC = Path(__file__).resolve().parent.parent / "docs" / "applications.md"


def documented_columns(table: str) -> list[str]:
    """The columns the document's table for *table* names, in order (a row may name several)."""
    section = DOC.read_text().split(f"### `{table}`", 1)[1].split("\n#", 1)[0]
    columns: list[str] = []
    for line in section.splitlines():
        if line.startswith("| `"):
            columns += re.findall(r"`([a-z0-9_]+)`", line.split("|")[1])
    return columns


@pytest.mark.parametrize("table", ["inbound_messages", "inbound_attachments"])
def test_the_documented_columns_are_the_table_s(pg_dsn: str, table: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        migrate(conn)
        actual = [name for (name,) in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position",
            (table,))]
    assert documented_columns(table) == actual


def example() -> str:
    [code] = re.findall(r"## A consumer in 15 lines\n.*?```python\n(.*?)```", DOC.read_text(), re.S)
    return code


def test_the_example_fits_in_15_lines() -> None:
    assert 10 <= len(example().splitlines()) <= 15


def test_the_consumer_example_handles_every_message_once(pg_dsn: str, tmp_path: Path) -> None:
    program = tmp_path / "consumer.py"
    program.write_text(example())
    source = FakeSource()

    async def store(*uids: int) -> list[int]:
        db = Database(PostgresConfig(dsn=pg_dsn, pool_min=1, pool_max=2))
        await db.open()
        try:
            await db.run(migrate)
            ids = []
            for uid in uids:
                job = job_for(uid)
                source.put(job, mime(uid))
                ids.append((await processor(db, source).handle(job)).message_row_id)
            return ids
        finally:
            await db.close()

    def start() -> tuple[subprocess.Popen[str], list[str]]:
        process = subprocess.Popen([sys.executable, str(program)], stdout=subprocess.PIPE, text=True,
                                   env=dict(os.environ, INBOUNDD_DSN=pg_dsn))
        lines: list[str] = []
        import threading

        threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True).start()
        return process, lines

    def handled() -> set[int]:
        """The ids the consumer has recorded as done (its own table; empty before it made it)."""
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            if conn.execute("SELECT to_regclass('app_handled')").fetchone()[0] is None:
                return set()
            return {id for (id,) in conn.execute("SELECT id FROM app_handled")}

    def stop(process: subprocess.Popen[str], done: set[int]) -> None:
        """Kill the consumer once it has recorded *done*: it prints before it records, so a kill
        between the two would (rightly) have it handle that message again after the restart."""
        try:
            wait_for(lambda: handled() >= done, 20, what=f"the consumer to record {sorted(done)} as handled")
        finally:
            process.kill()
            process.wait(timeout=10)

    [first] = trio.run(store, 1)                      # stored before the consumer ever ran
    process, lines = start()
    try:
        wait_for(lambda: len(lines) >= 1, 20, what="the message stored while the consumer was down")
        [second] = trio.run(store, 2)                  # stored while it waits: the NOTIFY wakes it,
        wait_for(lambda: len(lines) >= 2, 20, what="the notified message")  # well before its 60 s poll
    finally:
        stop(process, {first, second} if len(lines) >= 2 else set())
    assert lines == [f"new message {first} for {ACCOUNT} from c1@example.com: order 1\n",
                     f"new message {second} for {ACCOUNT} from c2@example.com: order 2\n"]
    process, lines = start()                           # restarted: nothing is handled twice
    try:
        [third] = trio.run(store, 3)
        wait_for(lambda: len(lines) >= 1, 20, what="the next new message")
    finally:
        stop(process, {third} if lines else set())
    assert lines == [f"new message {third} for {ACCOUNT} from c3@example.com: order 3\n"]
