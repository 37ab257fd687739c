"""Migrations: applied once, recorded, safe when several daemons start at once, refused when too new."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from inboundd.store.migrate import SchemaTooNew, available, current_version, migrate

ROOT = Path(__file__).resolve().parent.parent

TABLES = {"inbound_cursors", "inbound_ledger", "inbound_messages", "inbound_attachments", "inbound_schema_version"}


def _latest() -> int:
    return available()[-1].version


def _migrate(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:  # commits on exit
        return migrate(conn)


def _tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {name for (name,) in rows}


def test_shipped_migrations_are_numbered_without_gaps() -> None:
    migrations = available()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert [m.name for m in migrations[:3]] == ["cursors", "ledger_messages", "hashed_id_indexes"]


def test_fresh_database_gets_every_table_and_the_versions_recorded(pg_dsn: str) -> None:
    assert _migrate(pg_dsn) == list(range(1, _latest() + 1))
    assert TABLES <= _tables(pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT version, name FROM inbound_schema_version ORDER BY version").fetchall()
        assert rows == [(m.version, m.name) for m in available()]
        assert current_version(conn) == _latest()


def test_applying_twice_is_a_no_op(pg_dsn: str) -> None:
    _migrate(pg_dsn)
    assert _migrate(pg_dsn) == []
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM inbound_schema_version").fetchone()[0] == _latest()


def test_concurrent_starts_from_threads_apply_each_migration_once(pg_dsn: str) -> None:
    starters = 8
    barrier = threading.Barrier(starters)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            with psycopg.connect(pg_dsn) as conn:
                barrier.wait(timeout=30)
                results.append(migrate(conn))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(starters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sorted(results) == [[]] * (starters - 1) + [list(range(1, _latest() + 1))]
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM inbound_schema_version").fetchone()[0] == _latest()


_CHILD = """
import sys, time
import psycopg
sys.path.insert(0, sys.argv[1])
from inboundd.store.migrate import migrate
start_at = float(sys.argv[3])
while time.time() < start_at:
    time.sleep(0.001)
with psycopg.connect(sys.argv[2]) as conn:
    print(",".join(map(str, migrate(conn))))
"""


def test_concurrent_starts_from_processes_apply_each_migration_once(pg_dsn: str) -> None:
    import time

    start_at = str(time.time() + 1.5)  # both processes imported and connected by then
    procs = [
        subprocess.Popen([sys.executable, "-c", _CHILD, str(ROOT), pg_dsn, start_at],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outputs.append(out.strip())
    everything = ",".join(str(v) for v in range(1, _latest() + 1))
    assert sorted(outputs) == ["", "", everything]
    assert TABLES <= _tables(pg_dsn)


def test_a_database_from_a_newer_build_is_refused(pg_dsn: str) -> None:
    _migrate(pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO inbound_schema_version (version, name) VALUES (%s, 'from_the_future')",
                     (_latest() + 1,))
    with psycopg.connect(pg_dsn) as conn:
        with pytest.raises(SchemaTooNew, match=f"version {_latest() + 1}"):
            migrate(conn)


def test_a_failed_migration_leaves_nothing_half_applied(pg_dsn: str) -> None:
    # A database where a later table name is already taken: migration 2 fails, 1 is rolled back with it.
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE inbound_ledger (x int)")
    with psycopg.connect(pg_dsn) as conn:
        with pytest.raises(psycopg.errors.DuplicateTable):
            migrate(conn)
    assert "inbound_cursors" not in _tables(pg_dsn)
    assert "inbound_messages" not in _tables(pg_dsn)


def test_large_columns_compress_with_lz4_and_only_indexes_a_query_uses_remain(pg_dsn: str) -> None:
    _migrate(pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        compression = dict(conn.execute(
            "SELECT attrelid::regclass::text || '.' || attname, attcompression FROM pg_attribute"
            " WHERE attrelid IN ('inbound_messages'::regclass, 'inbound_attachments'::regclass)"
            " AND attname IN ('text_body', 'html_body', 'headers', 'raw', 'data')").fetchall())
        indexes = {name for (name,) in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename IN"
            " ('inbound_messages', 'inbound_attachments', 'inbound_ledger')").fetchall()}
        # Values are really written with lz4 (the test server is built with it, as Debian's is).
        conn.execute("INSERT INTO inbound_messages (tenant, account, provider, identity, job_id, thread_key, size,"
                     " text_body) VALUES ('t', 'a', 'imap', 'i', 'j', 'k', 1, repeat('compressible ', 1000))")
        method = conn.execute("SELECT pg_column_compression(text_body) FROM inbound_messages").fetchone()[0]
    assert compression == {"inbound_messages.text_body": "l", "inbound_messages.html_body": "l",
                           "inbound_messages.headers": "l", "inbound_messages.raw": "l",
                           "inbound_attachments.data": "l"}
    assert method == "lz4"
    assert indexes == {
        "inbound_messages_pkey", "inbound_messages_identity_key", "inbound_messages_message_id_idx",
        "inbound_messages_received_idx", "inbound_attachments_pkey", "inbound_attachments_position_key",
        "inbound_ledger_pkey", "inbound_ledger_open_idx", "inbound_ledger_message_idx", "inbound_ledger_job_idx",
    }
