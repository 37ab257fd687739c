"""Ingress resume points (``inboundd.ingress.cursors``) in a real PostgreSQL, and the in-memory twin.

The same story runs against both stores: a provider-neutral cursor round
trip, and a compare-and-set that lets two walkers of one mailbox race
without ever moving the cursor backwards.
"""

from __future__ import annotations

import pytest

from inboundd.config import PostgresConfig
from inboundd.ingress.cursors import DbCursorStore, MemoryCursorStore, StoredCursor
from inboundd.store.db import Database
from inboundd.store.migrate import migrate


@pytest.fixture(params=["postgres", "memory"])
async def cursors(request, pg_dsn: str):
    if request.param == "memory":
        yield MemoryCursorStore()
        return
    db = Database(PostgresConfig(dsn=pg_dsn, pool_min=1, pool_max=2))
    await db.open()
    try:
        await db.run(migrate)
        yield DbCursorStore(db)
    finally:
        await db.close()


async def test_each_provider_keeps_its_own_columns(cursors):
    imap = StoredCursor(uidvalidity=7, last_uid=42)
    gmail = StoredCursor(history_id=2**63 + 5)      # historyId is an unsigned 64-bit number
    graph = StoredCursor(delta_link="https://graph.example/delta?$deltatoken=abc")
    assert await cursors.load("acct", "INBOX") is None
    await cursors.save("acct", "INBOX", imap)
    await cursors.save("gmail-acct", "", gmail)
    await cursors.save("m365", "Inbox", graph)
    assert [await cursors.load(*key) for key in (("acct", "INBOX"), ("gmail-acct", ""), ("m365", "Inbox"))] == [
        imap, gmail, graph]
    await cursors.save("acct", "INBOX", StoredCursor(uidvalidity=8, last_uid=1))   # replaced, not merged
    assert await cursors.load("acct", "INBOX") == StoredCursor(uidvalidity=8, last_uid=1)


async def test_compare_and_set_never_moves_from_a_value_it_did_not_read(cursors):
    first, second, third = (StoredCursor(history_id=n) for n in (100, 200, 300))
    assert await cursors.compare_and_set("g", "", None, first)           # no row yet: created
    assert not await cursors.compare_and_set("g", "", None, second)      # a row exists now
    # Two walkers read 100; the one that writes first wins, the other must re-read.
    assert await cursors.compare_and_set("g", "", first, third)
    assert not await cursors.compare_and_set("g", "", first, second)
    assert await cursors.load("g", "") == third
