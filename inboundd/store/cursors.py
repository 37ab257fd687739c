"""Ingress resume points in ``inbound_cursors`` (one row per account and folder)."""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["ImapCursorRow", "get_cursor", "set_cursor"]


class ImapCursorRow(NamedTuple):
    uidvalidity: int | None
    last_uid: int | None


async def get_cursor(db: Any, account: str, folder: str) -> ImapCursorRow | None:
    """The stored IMAP cursor of (*account*, *folder*), or None if there is none."""

    def read(conn: Any) -> ImapCursorRow | None:
        row = conn.execute(
            "SELECT uidvalidity, last_uid FROM inbound_cursors WHERE account = %s AND folder = %s",
            (account, folder),
        ).fetchone()
        return ImapCursorRow(*row) if row else None

    return await db.run(read)


async def set_cursor(db: Any, account: str, folder: str, uidvalidity: int, last_uid: int) -> None:
    """Store the IMAP cursor of (*account*, *folder*) (insert or replace)."""

    def write(conn: Any) -> None:
        conn.execute(
            "INSERT INTO inbound_cursors (account, folder, uidvalidity, last_uid) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (account, folder) DO UPDATE"
            " SET uidvalidity = EXCLUDED.uidvalidity, last_uid = EXCLUDED.last_uid, updated_at = now()",
            (account, folder, uidvalidity, last_uid),
        )

    await db.run(write)
