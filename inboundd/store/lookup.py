"""What operators look up in the store: one message's story, and an account's recent messages.

``inboundctl trace`` asks "what happened to this email?" by job id,
identity or Message-ID: the ledger rows (:func:`ledger_rows`) and the stored
rows (:func:`stored`) of the message identities involved, found through
:func:`keys_for_job` and :func:`keys_for_message_id`. ``inboundctl messages``
lists what an account stored recently (:func:`recent`).

Every lookup is served by an index: the ledger's and the store's primary
keys ``(tenant, account, identity)``, the Message-ID index of
``inbound_messages`` (per tenant and account, on ``md5(message_id)``), the
ledger's job index, and ``received_at`` per account. The caller names the
(tenant, account) pairs to search (the configured accounts), which is what
lets the composite indexes serve. Functions take a psycopg connection and
only read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from .ledger import Key, LedgerRow

__all__ = ["Stored", "keys_for_job", "keys_for_message_id", "ledger_rows", "recent", "stored"]


class Stored(NamedTuple):
    """One stored message as operators see it (the columns of the stable contract that identify it)."""

    id: int
    tenant: str
    account: str
    provider: str
    identity: str
    job_id: str
    message_id: str | None
    from_name: str | None
    from_address: str | None
    subject: str
    received_at: datetime
    sent_at: datetime | None
    size: int
    is_auto_reply: bool
    is_bounce: bool
    defects: int
    attachments: int


_STORED = (
    "SELECT m.id, m.tenant, m.account, m.provider, m.identity, m.job_id, m.message_id, m.from_name,"
    " m.from_address, m.subject, m.received_at, m.sent_at, m.size, m.is_auto_reply, m.is_bounce,"
    " cardinality(m.defects), (SELECT count(*) FROM inbound_attachments a WHERE a.message_id = m.id)"
    " FROM inbound_messages m"
)
_LEDGER = f"SELECT {', '.join(LedgerRow._fields)} FROM inbound_ledger"


def _by_keys(conn: Any, select: str, keys: Iterable[Key], order: str) -> list[tuple[Any, ...]]:
    unique = list(dict.fromkeys(keys))
    if not unique:
        return []
    return conn.execute(
        f"{select} WHERE (tenant, account, identity) IN"
        f" (SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])) ORDER BY {order}",
        ([k.tenant for k in unique], [k.account for k in unique], [k.identity for k in unique]),
    ).fetchall()


def ledger_rows(conn: Any, keys: Iterable[Key]) -> list[LedgerRow]:
    """The ledger rows of *keys* (those that have one), oldest first."""
    return [LedgerRow(*row) for row in _by_keys(conn, _LEDGER, keys, "created_at")]


def stored(conn: Any, keys: Iterable[Key] = (), ids: Iterable[int] = ()) -> list[Stored]:
    """The stored messages of *keys* and those with the row *ids* (each once), oldest first."""
    found = {row[0]: Stored(*row) for row in _by_keys(conn, _STORED, keys, "m.id")}
    wanted = [i for i in dict.fromkeys(ids) if i not in found]
    if wanted:
        for row in conn.execute(f"{_STORED} WHERE m.id = ANY(%s)", (wanted,)).fetchall():
            found[row[0]] = Stored(*row)
    return [found[i] for i in sorted(found)]


def keys_for_job(conn: Any, job_id: str) -> list[Key]:
    """The identities job *job_id* claimed last in the ledger (one, unless ids were reused)."""
    rows = conn.execute("SELECT tenant, account, identity FROM inbound_ledger WHERE job_id = %s", (job_id,))
    return [Key(*row) for row in rows.fetchall()]


def keys_for_message_id(conn: Any, message_id: str, accounts: Sequence[tuple[str, str]]) -> list[Key]:
    """The identities stored with RFC *message_id* (normalized, no ``<>``) in the (tenant, account) *accounts*.

    Besides the stored rows themselves, the ledger rows that point at them
    (the duplicates of a stored message, recorded against the original).
    """
    if not accounts:
        return []
    rows = conn.execute(
        "WITH m AS (SELECT id, tenant, account, identity FROM inbound_messages"
        " WHERE (tenant, account) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
        " AND md5(message_id) = md5(%s) AND message_id = %s)"
        " SELECT tenant, account, identity FROM m"
        " UNION SELECT l.tenant, l.account, l.identity FROM inbound_ledger l JOIN m ON l.message_id = m.id",
        ([tenant for tenant, _ in accounts], [account for _, account in accounts], message_id, message_id),
    )
    return sorted(Key(*row) for row in rows.fetchall())


def recent(conn: Any, tenant: str, account: str, seconds: float, limit: int) -> list[Stored]:
    """What (*tenant*, *account*) stored within the last *seconds* (PostgreSQL's clock), newest first."""
    rows = conn.execute(
        f"{_STORED} WHERE m.tenant = %s AND m.account = %s"
        " AND m.received_at > now() - make_interval(secs => %s) ORDER BY m.received_at DESC, m.id DESC LIMIT %s",
        (tenant, account, float(seconds), limit),
    )
    return [Stored(*row) for row in rows.fetchall()]
