"""Ingress resume points in ``inbound_cursors`` (one row per account and folder).

The row is provider-neutral (:class:`StoredCursor`): IMAP keeps UIDVALIDITY
and the last UID, Gmail the last historyId walked, Graph the delta link;
columns a provider does not use stay NULL. :func:`compare_and_set` moves a
cursor only from the value the caller read, so two walkers of one mailbox
never move it backwards.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

__all__ = ["StoredCursor", "compare_and_set", "cursor_updated_at", "get_cursor", "set_cursor"]

_COLUMNS = ("uidvalidity", "last_uid", "history_id", "delta_link")


class StoredCursor(msgspec.Struct, frozen=True, kw_only=True):
    """One resume point as stored; each provider uses its own columns."""

    uidvalidity: int | None = None
    last_uid: int | None = None
    history_id: int | None = None
    delta_link: str | None = None

    def values(self) -> tuple[Any, ...]:
        return (self.uidvalidity, self.last_uid, self.history_id, self.delta_link)


def _from_row(row: tuple[Any, ...]) -> StoredCursor:
    uidvalidity, last_uid, history_id, delta_link = row
    return StoredCursor(
        uidvalidity=None if uidvalidity is None else int(uidvalidity),
        last_uid=None if last_uid is None else int(last_uid),
        history_id=None if history_id is None else int(history_id),  # numeric(20) comes back as Decimal
        delta_link=delta_link,
    )


async def get_cursor(db: Any, account: str, folder: str) -> StoredCursor | None:
    """The stored cursor of (*account*, *folder*), or None if there is none."""

    def read(conn: Any) -> StoredCursor | None:
        row = conn.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM inbound_cursors WHERE account = %s AND folder = %s",
            (account, folder),
        ).fetchone()
        return _from_row(row) if row else None

    return await db.run(read)


async def cursor_updated_at(db: Any, account: str, folder: str) -> datetime | None:
    """When the cursor of (*account*, *folder*) last moved, or None if there is none."""

    def read(conn: Any) -> datetime | None:
        row = conn.execute("SELECT updated_at FROM inbound_cursors WHERE account = %s AND folder = %s",
                           (account, folder)).fetchone()
        return row[0] if row else None

    return await db.run(read)


async def set_cursor(db: Any, account: str, folder: str, cursor: StoredCursor) -> None:
    """Store the cursor of (*account*, *folder*) (insert or replace)."""

    def write(conn: Any) -> None:
        conn.execute(
            f"INSERT INTO inbound_cursors (account, folder, {', '.join(_COLUMNS)}) VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (account, folder) DO UPDATE SET uidvalidity = EXCLUDED.uidvalidity,"
            " last_uid = EXCLUDED.last_uid, history_id = EXCLUDED.history_id, delta_link = EXCLUDED.delta_link,"
            " updated_at = now()",
            (account, folder, *cursor.values()),
        )

    await db.run(write)


async def compare_and_set(
    db: Any, account: str, folder: str, expected: StoredCursor | None, new: StoredCursor
) -> bool:
    """Store *new* only if the stored cursor still is *expected* (None: no row yet); True if it was stored."""

    def write(conn: Any) -> bool:
        if expected is None:
            cur = conn.execute(
                f"INSERT INTO inbound_cursors (account, folder, {', '.join(_COLUMNS)})"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (account, folder) DO NOTHING",
                (account, folder, *new.values()),
            )
        else:
            matches = " AND ".join(f"{column} IS NOT DISTINCT FROM %s" for column in _COLUMNS)
            cur = conn.execute(
                "UPDATE inbound_cursors SET uidvalidity = %s, last_uid = %s, history_id = %s, delta_link = %s,"
                f" updated_at = now() WHERE account = %s AND folder = %s AND {matches}",
                (*new.values(), account, folder, *expected.values()),
            )
        return cur.rowcount == 1

    return await db.run(write)
