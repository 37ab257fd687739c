"""Versioned SQL migrations: ``store/migrations/NNNN_name.sql``, applied in order.

:func:`migrate` runs in the caller's transaction under a transaction-scoped
advisory lock, so several daemons starting at once apply each migration
exactly once, and a failed migration leaves nothing half-applied. A database
that records a version newer than this build knows is refused
(:class:`SchemaTooNew`): an older daemon must not write into a newer schema.
"""

from __future__ import annotations

import re
from importlib.resources import files
from typing import Any, NamedTuple

__all__ = ["Migration", "SchemaTooNew", "available", "current_version", "migrate"]

#: Key of the advisory lock serialising migrations (any constant; "inbd" in ASCII).
_LOCK_KEY = 0x696E6264

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class Migration(NamedTuple):
    version: int
    name: str
    sql: str


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer inboundd than this one."""


def available() -> list[Migration]:
    """Every migration shipped in the package, by version."""
    found = []
    for entry in files("inboundd.store").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration versions must be 1..N without gaps, found {versions}")
    return found


def current_version(conn: Any) -> int:
    """The highest applied version (0 for an empty database)."""
    row = conn.execute(
        "SELECT to_regclass('inbound_schema_version') IS NOT NULL"
    ).fetchone()
    if not row[0]:
        return 0
    return conn.execute("SELECT coalesce(max(version), 0) FROM inbound_schema_version").fetchone()[0]


def migrate(conn: Any) -> list[int]:
    """Apply pending migrations in the current transaction; return the versions applied.

    Raises :class:`SchemaTooNew` when the database is ahead of this build.
    """
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    conn.execute(
        "CREATE TABLE IF NOT EXISTS inbound_schema_version ("
        " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    migrations = available()
    latest = migrations[-1].version if migrations else 0
    current = current_version(conn)
    if current > latest:
        raise SchemaTooNew(
            f"database schema is at version {current}, this inboundd understands up to {latest}: "
            "upgrade inboundd (a newer version migrated this database)"
        )
    applied = []
    for migration in migrations:
        if migration.version <= current:
            continue
        conn.execute(migration.sql)
        conn.execute(
            "INSERT INTO inbound_schema_version (version, name) VALUES (%s, %s)",
            (migration.version, migration.name),
        )
        applied.append(migration.version)
    return applied
