"""The message store: ``inbound_messages`` and ``inbound_attachments``.

Functions take a psycopg connection and run in the caller's transaction, so
the message, its attachments and the ledger's terminal state commit together
(``processing.py`` does that). PostgreSQL ``text`` and ``jsonb`` cannot hold
NUL characters: any left in a string are replaced by U+FFFD here.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Iterable, Sequence

from psycopg.types.json import Jsonb

from ..jobs import Job
from ..mime import Address, Message
from ..source import FetchedMessage

__all__ = [
    "MESSAGE_ID_LOCK_CLASS",
    "attachments",
    "attachments_by_message",
    "find_by_message_id",
    "find_by_message_ids",
    "get_message",
    "last_stored_date",
    "insert_message",
    "insert_messages",
    "lock_message_id",
    "lock_message_ids",
    "messages_by_id",
    "notify",
    "notify_many",
]

#: First key of the two-key advisory locks that serialize one (tenant, account,
#: Message-ID); the two-key space never collides with one-key locks (migrations).
MESSAGE_ID_LOCK_CLASS = 0x6D736964  # "msid"

#: Channel of the ``NOTIFY`` sent with each stored message's id.
CHANNEL = "inbound_message"


def _t(value: str | None) -> str | None:
    if value is None or "\x00" not in value:
        return value
    return value.replace("\x00", "\ufffd")


def _addresses(items: Iterable[Address]) -> Jsonb:
    return Jsonb([{"name": _t(a.name), "address": _t(a.address)} for a in items])


def _lock_id(tenant: str, account: str, message_id: str) -> int:
    digest = hashlib.blake2b(f"{tenant}\n{account}\n{message_id}".encode("utf-8", "surrogatepass"), digest_size=4)
    return int.from_bytes(digest.digest(), "big", signed=True)


def lock_message_id(conn: Any, tenant: str, account: str, message_id: str) -> None:
    """Serialize, until the transaction ends, every store of *message_id* in (*tenant*, *account*).

    Taken before :func:`find_by_message_id`, it makes "look up, then insert"
    race-free: a concurrent transaction with the same Message-ID waits here and
    then sees the row this one committed. Hash collisions only serialize.
    """
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (MESSAGE_ID_LOCK_CLASS, _lock_id(tenant, account, message_id)))


def find_by_message_id(conn: Any, tenant: str, account: str, message_id: str) -> int | None:
    """The id of the first stored message of (*tenant*, *account*) with RFC *message_id*, or None."""
    row = conn.execute(
        "SELECT id FROM inbound_messages WHERE tenant = %s AND account = %s"
        " AND md5(message_id) = md5(%s) AND message_id = %s ORDER BY id LIMIT 1",
        (tenant, account, _t(message_id), _t(message_id)),
    ).fetchone()
    return row[0] if row else None


_INSERT_MESSAGE = """
INSERT INTO inbound_messages (
    tenant, account, provider, identity, provider_message_id, folder, labels, job_id,
    message_id, in_reply_to, "references", thread_key,
    from_name, from_address, to_addresses, cc_addresses, reply_to_addresses, sender, return_path,
    subject, sent_at, internal_date, text_body, html_body, headers, size,
    is_auto_reply, is_bounce, auto_reason, defects, raw
) VALUES (
    %s, %s, %s, %s, %s, %s, %s, %s,
    %s, %s, %s, %s,
    %s, %s, %s, %s, %s, %s, %s,
    %s, %s, %s, %s, %s, %s, %s,
    %s, %s, %s, %s, %b
) RETURNING id
"""

_INSERT_ATTACHMENT = """
INSERT INTO inbound_attachments (message_id, position, filename, content_type, size, sha256, content_id, inline, data)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %b)
"""


def _message_row(job: Job, fetched: FetchedMessage, message: Message, keep_raw: bool) -> tuple[Any, ...]:
    """The parameters of ``_INSERT_MESSAGE`` for one message."""
    sender = message.from_
    return (
        job.tenant, job.account, job.provider, job.identity(), _t(fetched.provider_message_id),
        _t(fetched.folder), [_t(label) for label in fetched.labels], job.id,
        _t(message.message_id), _t(message.in_reply_to), [_t(r) for r in message.references],
        _t(message.thread_key),
        _t(sender.name) if sender else None, _t(sender.address) if sender else None,
        _addresses(message.to), _addresses(message.cc), _addresses(message.reply_to),
        _t(message.sender), _t(message.return_path),
        _t(message.subject), message.date, fetched.internal_date, _t(message.text_body), _t(message.html_body),
        Jsonb([[_t(name), _t(value)] for name, value in message.headers]), len(fetched.raw),
        message.is_auto_reply, message.is_bounce, _t(message.auto_reason), [_t(d) for d in message.defects],
        fetched.raw if keep_raw else None,
    )


def _attachment_rows(message_row_id: int, message: Message) -> list[tuple[Any, ...]]:
    """The parameters of ``_INSERT_ATTACHMENT`` for every attachment of one message."""
    return [(message_row_id, position, _t(a.filename), _t(a.content_type), a.size, a.sha256, _t(a.content_id),
             a.inline, a.data) for position, a in enumerate(message.attachments)]


def insert_message(
    conn: Any, job: Job, fetched: FetchedMessage, message: Message, *, keep_raw: bool = False
) -> int:
    """Insert *message* and its attachments; return ``inbound_messages.id``.

    Raises ``psycopg.errors.UniqueViolation`` if the identity is already
    stored (the ledger prevents that; the constraint is the last line).
    """
    row = conn.execute(_INSERT_MESSAGE, _message_row(job, fetched, message, keep_raw)).fetchone()
    message_row_id: int = row[0]
    if message.attachments:
        with conn.cursor() as cur:
            cur.executemany(_INSERT_ATTACHMENT, _attachment_rows(message_row_id, message))
    return message_row_id


def insert_messages(conn: Any, items: Sequence[tuple[Job, FetchedMessage, Message]], *,
                    keep_raw: bool = False) -> list[int]:
    """:func:`insert_message` for many messages, the inserts pipelined (one round trip); the ids, in order."""
    if not items:
        return []
    ids: list[int] = []
    with conn.cursor() as cur:
        cur.executemany(_INSERT_MESSAGE, [_message_row(job, fetched, message, keep_raw)
                                          for job, fetched, message in items], returning=True)
        while True:
            ids.append(cur.fetchone()[0])
            if not cur.nextset():
                break
        rows = [row for message_row_id, (_, _, message) in zip(ids, items)
                for row in _attachment_rows(message_row_id, message)]
        if rows:
            cur.executemany(_INSERT_ATTACHMENT, rows)
    return ids


def notify(conn: Any, message_row_id: int) -> None:
    """``NOTIFY inbound_message, '<id>'`` — delivered to listeners when the transaction commits."""
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(message_row_id)))


def last_stored_date(conn: Any, tenant: str, account: str) -> datetime | None:
    """The date (provider's internal date, else storage time) of the account's most recently stored message."""
    row = conn.execute(
        "SELECT coalesce(internal_date, received_at) FROM inbound_messages WHERE tenant = %s AND account = %s"
        " ORDER BY received_at DESC LIMIT 1",
        (tenant, account),
    ).fetchone()
    return row[0] if row else None


# ---------------------------------------------------------------------------- batches


def lock_message_ids(conn: Any, ids: Iterable[tuple[str, str, str]]) -> None:
    """:func:`lock_message_id` for many (tenant, account, Message-ID) in one statement.

    The locks are taken in ascending lock-key order, so two batches sharing
    Message-IDs cannot deadlock on them (a single store takes one lock).
    """
    keys = sorted({_lock_id(tenant, account, message_id) for tenant, account, message_id in ids})
    if keys:
        conn.execute("SELECT count(pg_advisory_xact_lock(%s, k)) FROM unnest(%s::int[]) AS k",
                     (MESSAGE_ID_LOCK_CLASS, keys))


def find_by_message_ids(conn: Any, ids: Sequence[tuple[str, str, str]]) -> list[int | None]:
    """:func:`find_by_message_id` for many (tenant, account, Message-ID) in one statement, in order."""
    if not ids:
        return []
    rows = conn.execute(
        "SELECT (SELECT m.id FROM inbound_messages m WHERE m.tenant = v.tenant AND m.account = v.account"
        "        AND md5(m.message_id) = md5(v.message_id) AND m.message_id = v.message_id ORDER BY m.id LIMIT 1)"
        " FROM unnest(%s::text[], %s::text[], %s::text[]) WITH ORDINALITY AS v(tenant, account, message_id, n)"
        " ORDER BY v.n",
        ([t for t, _, _ in ids], [a for _, a, _ in ids], [_t(m) for _, _, m in ids]),
    ).fetchall()
    return [row[0] for row in rows]


def notify_many(conn: Any, message_row_ids: Sequence[int]) -> None:
    """:func:`notify` for many stored messages, in order, in one statement."""
    if message_row_ids:
        conn.execute("SELECT count(pg_notify(%s, id::text)) FROM unnest(%s::bigint[]) WITH ORDINALITY AS u(id, n)",
                     (CHANNEL, list(message_row_ids)))


def get_message(conn: Any, message_row_id: int) -> dict[str, Any] | None:
    """One stored message as a column → value dict (operators' tools and tests)."""
    cur = conn.execute("SELECT * FROM inbound_messages WHERE id = %s", (message_row_id,))
    row = cur.fetchone()
    if row is None:
        return None
    return {column.name: value for column, value in zip(cur.description, row)}


def attachments(conn: Any, message_row_id: int) -> list[dict[str, Any]]:
    """The attachments of a stored message in their order, as column → value dicts (``data`` as bytes)."""
    cur = conn.execute(
        "SELECT * FROM inbound_attachments WHERE message_id = %s ORDER BY position", (message_row_id,)
    )
    names = [column.name for column in cur.description]
    return [{name: (bytes(value) if name == "data" else value) for name, value in zip(names, row)}
            for row in cur.fetchall()]


def messages_by_id(conn: Any, message_row_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Stored messages by id, as column → value dicts, without ``raw`` (the deliverer's payloads)."""
    cur = conn.execute(f"SELECT {_COLUMNS_BUT_RAW} FROM inbound_messages WHERE id = ANY(%s)", (list(message_row_ids),))
    names = [column.name for column in cur.description]
    return {row[0]: dict(zip(names, row)) for row in cur.fetchall()}


_COLUMNS_BUT_RAW = (
    'id, tenant, account, provider, identity, provider_message_id, folder, labels, job_id, message_id, in_reply_to,'
    ' "references", thread_key, from_name, from_address, to_addresses, cc_addresses, reply_to_addresses, sender,'
    ' return_path, subject, sent_at, internal_date, received_at, text_body, html_body, headers, size,'
    ' is_auto_reply, is_bounce, auto_reason, defects'
)


def attachments_by_message(
    conn: Any, message_row_ids: Sequence[int], *, inline_max: int
) -> dict[int, list[dict[str, Any]]]:
    """The attachments of each message, in order, as column → value dicts.

    ``data`` is the content (bytes) while the message's running total of
    attachment sizes stays within *inline_max*, else None: large contents
    never leave the database only to be dropped.
    """
    cur = conn.execute(
        "SELECT message_id, position, filename, content_type, size, sha256, content_id, inline,"
        " CASE WHEN sum(size) OVER (PARTITION BY message_id ORDER BY position) <= %s THEN data END AS data"
        " FROM inbound_attachments WHERE message_id = ANY(%s) ORDER BY message_id, position",
        (inline_max, list(message_row_ids)),
    )
    names = [column.name for column in cur.description]
    found: dict[int, list[dict[str, Any]]] = {}
    for row in cur.fetchall():
        values = dict(zip(names, row))
        if values["data"] is not None:
            values["data"] = bytes(values["data"])
        found.setdefault(values["message_id"], []).append(values)
    return found
