"""Where ingress keeps its resume points: one provider-neutral cursor per (account, folder).

A provider reads its cursor on every (re)connect or walk, and writes it only
after Redis acknowledged the jobs it covers, so a crash re-enqueues (the
ledger deduplicates) but never skips. :class:`DbCursorStore` keeps them in
``inbound_cursors``; :class:`MemoryCursorStore` in a dict, for benches and
tests that do not exercise persistence. Both offer a compare-and-set for
walkers that may race (several consumers or daemons on one mailbox).
"""

from __future__ import annotations

from typing import Any, Protocol

from ..store import cursors as rows
from ..store.cursors import StoredCursor

__all__ = ["CursorStore", "DbCursorStore", "MemoryCursorStore", "StoredCursor"]


class CursorStore(Protocol):
    """Where ingress persists its resume points."""

    async def load(self, account: str, folder: str) -> StoredCursor | None: ...

    async def save(self, account: str, folder: str, cursor: StoredCursor) -> None: ...

    async def compare_and_set(
        self, account: str, folder: str, expected: StoredCursor | None, new: StoredCursor
    ) -> bool: ...


class DbCursorStore:
    """Cursors in PostgreSQL (``inbound_cursors``), through :mod:`inboundd.store.cursors`."""

    def __init__(self, db: Any) -> None:
        self.db = db

    async def load(self, account: str, folder: str) -> StoredCursor | None:
        return await rows.get_cursor(self.db, account, folder)

    async def save(self, account: str, folder: str, cursor: StoredCursor) -> None:
        await rows.set_cursor(self.db, account, folder, cursor)

    async def compare_and_set(
        self, account: str, folder: str, expected: StoredCursor | None, new: StoredCursor
    ) -> bool:
        return await rows.compare_and_set(self.db, account, folder, expected, new)


class MemoryCursorStore:
    """Cursors in a dict: for benches and tests that do not exercise persistence."""

    def __init__(self) -> None:
        self.cursors: dict[tuple[str, str], StoredCursor] = {}

    async def load(self, account: str, folder: str) -> StoredCursor | None:
        return self.cursors.get((account, folder))

    async def save(self, account: str, folder: str, cursor: StoredCursor) -> None:
        self.cursors[(account, folder)] = cursor

    async def compare_and_set(
        self, account: str, folder: str, expected: StoredCursor | None, new: StoredCursor
    ) -> bool:
        if self.cursors.get((account, folder)) != expected:
            return False
        self.cursors[(account, folder)] = new
        return True
