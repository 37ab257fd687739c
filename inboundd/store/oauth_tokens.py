"""Rotated refresh tokens in ``inbound_oauth_tokens`` (one row per account).

A row holds the newest refresh token the token endpoint issued for an
account, under the *origin* (a hash) of the refresh token in the configured
credentials: it is used only while that configured token is unchanged.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DbRotatedTokens", "load_rotated", "save_rotated"]


def load_rotated(conn: Any, account: str, origin: str) -> str | None:
    """The rotated refresh token of *account* if it descends from *origin*, else None."""
    row = conn.execute(
        "SELECT refresh_token FROM inbound_oauth_tokens WHERE account = %s AND origin = %s", (account, origin)
    ).fetchone()
    return row[0] if row else None


def save_rotated(conn: Any, account: str, origin: str, refresh_token: str) -> None:
    """Record *refresh_token* as the newest of *account*, descending from *origin* (insert or replace)."""
    conn.execute(
        "INSERT INTO inbound_oauth_tokens (account, origin, refresh_token) VALUES (%s, %s, %s)"
        " ON CONFLICT (account) DO UPDATE"
        " SET origin = EXCLUDED.origin, refresh_token = EXCLUDED.refresh_token, updated_at = now()",
        (account, origin, refresh_token),
    )


class DbRotatedTokens:
    """The table through a ``Database`` (``db.run``): what token providers persist rotations with."""

    def __init__(self, db: Any) -> None:
        self.db = db

    async def load(self, account: str, origin: str) -> str | None:
        return await self.db.run(load_rotated, account, origin)

    async def save(self, account: str, origin: str, refresh_token: str) -> None:
        await self.db.run(save_rotated, account, origin, refresh_token)
