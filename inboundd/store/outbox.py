"""The delivery outbox (``inbound_deliveries``): what is owed to each ``[[deliver]]`` target, and what happened.

:func:`insert` runs in the store transaction (``processing.commit_message``),
so a delivery row exists if and only if its message was stored; it takes
any number of rows at once. The deliverer (``inboundd/deliver/``) then
:func:`claim`\\ s rows under a lease — one owner per row across daemons
(``FOR UPDATE SKIP LOCKED``), the lease kept in ``next_attempt_at`` with the
claim's token in ``lease_owner`` — sends them, and :func:`record`\\ s each
outcome, fenced on that token. A sender that dies leaves its rows leased
until the lease ends (or its daemon restarts and :func:`release_owned`
hands them back); they are then sent again under the same ``delivery_id``.

Every function takes a psycopg connection and runs in the caller's
transaction; times are PostgreSQL's clock, the one every daemon shares.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Collection, Iterable, Literal, NamedTuple, Sequence

__all__ = [
    "CHANNEL",
    "Claimed",
    "DeliveryRow",
    "NewDelivery",
    "Result",
    "TargetCounts",
    "claim",
    "counts",
    "exists",
    "insert",
    "listing",
    "next_due",
    "notify",
    "record",
    "redeliver",
    "release",
    "release_owned",
    "reopen_failed_since",
]

#: Channel of the ``NOTIFY`` that wakes the deliverers; the payload is a target id.
CHANNEL = "inbound_delivery"

#: ``last_error`` is cut to this many characters.
MAX_ERROR_LENGTH = 2000


class NewDelivery(NamedTuple):
    """One row to insert: *raw* is the MIME an ``action_mailbox`` delivery sends (None otherwise)."""

    message_row_id: int
    target: str
    kind: str
    raw: bytes | None = None


def insert(conn: Any, rows: Sequence[NewDelivery]) -> None:
    """Insert *rows* (one statement whatever their number) and wake their targets' deliverers on commit."""
    if not rows:
        return
    conn.execute(
        "INSERT INTO inbound_deliveries (message_id, target, kind, raw)"
        " SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bytea[])",
        ([r.message_row_id for r in rows], [r.target for r in rows], [r.kind for r in rows], [r.raw for r in rows]),
    )
    notify(conn, {r.target for r in rows})


def notify(conn: Any, targets: Iterable[str]) -> None:
    """``NOTIFY inbound_delivery, '<target>'`` for each of *targets*, sent when the transaction commits."""
    names = sorted(set(targets))
    if names:
        conn.execute("SELECT pg_notify(%s, t) FROM unnest(%s::text[]) AS t", (CHANNEL, names))


class Claimed(NamedTuple):
    """A row claimed for sending; its lease is ``lease_owner``'s until recorded or expired."""

    id: int
    delivery_id: str
    message_row_id: int
    target: str
    kind: str
    #: Attempts including this one.
    attempts: int
    created_at: datetime
    lease_owner: str
    #: The raw MIME (the row's own, else ``inbound_messages.raw``), when *with_raw* asked for it.
    raw: bytes | None


#: A row whose last attempt got no answer, or one of these statuses (``probe_statuses``), waits for
#: its target rather than for itself: it may be a probe, and is due again once the target is back.
_WAITS_FOR_TARGET = "(d.last_status IS NULL OR d.last_status = ANY(%(statuses)s::int[]))"


def claim(conn: Any, target: str, owner: str, *, limit: int, lease: float,
          probe_statuses: Collection[int] | None = None, with_raw: bool = False) -> list[Claimed]:
    """Lease up to *limit* of *target*'s oldest due pending rows to *owner* for *lease* seconds; oldest first.

    Each counts an attempt. Rows another transaction is claiming are skipped,
    never waited for. With *probe_statuses* (the request a deliverer sends
    to learn whether a target is back) a row no one holds qualifies even
    before it is due, if it is waiting for its target: never attempted, or
    its last attempt got no answer or one of *probe_statuses*.
    """
    due = "d.next_attempt_at <= clock_timestamp()"
    if probe_statuses is not None:
        due = f"(d.lease_owner IS NULL OR {due}) AND ({due} OR {_WAITS_FOR_TARGET})"
    raw = "coalesce(c.raw, m.raw)" if with_raw else "NULL::bytea"
    rows = conn.execute(
        f"""
        WITH picked AS (
            SELECT d.id FROM inbound_deliveries d
             WHERE d.target = %(target)s AND d.status = 'pending' AND {due}
             ORDER BY d.id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
        ), claimed AS (
            UPDATE inbound_deliveries d
               SET lease_owner = %(owner)s, attempts = d.attempts + 1,
                   next_attempt_at = clock_timestamp() + make_interval(secs => %(lease)s),
                   last_attempt_at = clock_timestamp(), updated_at = clock_timestamp()
              FROM picked WHERE d.id = picked.id
            RETURNING d.id, d.delivery_id, d.message_id, d.target, d.kind, d.attempts, d.created_at,
                      d.lease_owner, d.raw
        )
        SELECT c.id, c.delivery_id, c.message_id, c.target, c.kind, c.attempts, c.created_at, c.lease_owner, {raw}
          FROM claimed c JOIN inbound_messages m ON m.id = c.message_id
         ORDER BY c.id
        """,
        {"target": target, "owner": owner, "limit": limit, "lease": float(lease),
         "statuses": sorted(probe_statuses or ())},
    ).fetchall()
    return [Claimed(*row[:8], bytes(row[8]) if row[8] is not None else None) for row in rows]


def release(conn: Any, rows: Sequence[tuple[int, str]]) -> int:
    """Hand back claimed rows never sent, ``(id, lease_owner)`` each: due now, their attempt not counted; how many."""
    if not rows:
        return 0
    cur = conn.execute(
        "UPDATE inbound_deliveries d SET lease_owner = NULL, attempts = greatest(d.attempts - 1, 0),"
        " next_attempt_at = clock_timestamp(), updated_at = clock_timestamp()"
        " FROM unnest(%s::bigint[], %s::text[]) AS r(id, owner)"
        " WHERE d.id = r.id AND d.status = 'pending' AND d.lease_owner = r.owner",
        ([row_id for row_id, _ in rows], [owner for _, owner in rows]),
    )
    return cur.rowcount


def next_due(conn: Any, target: str) -> float | None:
    """Seconds until *target*'s earliest pending row is due or its lease ends (≤ 0: now); None if none pending."""
    row = conn.execute(
        "SELECT extract(epoch FROM min(next_attempt_at) - clock_timestamp())::float8 FROM inbound_deliveries"
        " WHERE target = %s AND status = 'pending'",
        (target,),
    ).fetchone()
    return row[0]


class Result(NamedTuple):
    """The outcome of one attempt, to :func:`record`."""

    id: int
    lease_owner: str
    outcome: Literal["delivered", "retry", "dead"]
    #: Seconds until the next attempt (``retry`` only).
    delay: float = 0.0
    #: The HTTP status answered, None when there was no answer.
    http_status: int | None = None
    error: str | None = None


_STATUS_OF = {"delivered": "delivered", "retry": "pending", "dead": "dead"}


def record(conn: Any, results: Sequence[Result]) -> int:
    """Record *results* (one statement); returns how many rows were still held by their lease owner.

    A row whose lease was taken over meanwhile is left as its new holder
    has it. A delivered row's raw MIME is dropped.
    """
    if not results:
        return 0
    cur = conn.execute(
        """
        UPDATE inbound_deliveries d
           SET status = r.status,
               next_attempt_at = CASE WHEN r.status = 'pending'
                                      THEN clock_timestamp() + make_interval(secs => r.delay)
                                      ELSE d.next_attempt_at END,
               lease_owner = NULL, last_status = r.http_status, last_error = r.error,
               raw = CASE WHEN r.status = 'delivered' THEN NULL ELSE d.raw END,
               delivered_at = CASE WHEN r.status = 'delivered' THEN clock_timestamp() END,
               updated_at = clock_timestamp()
          FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::float8[], %s::int[], %s::text[])
               AS r(id, owner, status, delay, http_status, error)
         WHERE d.id = r.id AND d.status = 'pending' AND d.lease_owner = r.owner
        """,
        (
            [r.id for r in results], [r.lease_owner for r in results], [_STATUS_OF[r.outcome] for r in results],
            [float(r.delay) for r in results], [r.http_status for r in results],
            [_clean(r.error) for r in results],
        ),
    )
    return cur.rowcount


def _clean(error: str | None) -> str | None:
    return None if error is None else error.replace("\x00", "\ufffd")[:MAX_ERROR_LENGTH]


def reopen_failed_since(conn: Any, target: str, seconds: float, statuses: Collection[int]) -> int:
    """The target is back: make its rows that waited for it (see :func:`claim`) and failed within the last
    *seconds* due now; how many."""
    cur = conn.execute(
        "UPDATE inbound_deliveries d SET next_attempt_at = clock_timestamp(), updated_at = clock_timestamp()"
        " WHERE d.target = %(target)s AND d.status = 'pending' AND d.lease_owner IS NULL"
        f" AND d.next_attempt_at > clock_timestamp() AND {_WAITS_FOR_TARGET}"
        " AND d.last_attempt_at >= clock_timestamp() - make_interval(secs => %(seconds)s)",
        {"target": target, "seconds": float(seconds), "statuses": sorted(statuses)},
    )
    return cur.rowcount


def release_owned(conn: Any, instance: str) -> int:
    """Hand back, due now, every row leased by a claim of *instance* (a restart of it); how many."""
    prefix = f"{instance}:"
    cur = conn.execute(
        "UPDATE inbound_deliveries SET lease_owner = NULL, next_attempt_at = clock_timestamp(),"
        " updated_at = clock_timestamp()"
        " WHERE status = 'pending' AND lease_owner IS NOT NULL AND left(lease_owner, %s) = %s",
        (len(prefix), prefix),
    )
    return cur.rowcount


# ---------------------------------------------------------------------------- reports and operations


def exists(conn: Any) -> bool:
    """Whether the outbox table exists (``inboundctl migrate`` made it)."""
    return bool(conn.execute("SELECT to_regclass('inbound_deliveries') IS NOT NULL").fetchone()[0])


class TargetCounts(NamedTuple):
    target: str
    pending: int
    dead: int
    #: Seconds since the oldest pending row was made; None without pending rows.
    oldest_pending_age: float | None


def counts(conn: Any) -> list[TargetCounts]:
    """Pending and dead rows per target (targets with neither are absent), by target."""
    rows = conn.execute(
        "SELECT target, count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'dead'),"
        " extract(epoch FROM clock_timestamp() - min(created_at) FILTER (WHERE status = 'pending'))::float8"
        " FROM inbound_deliveries WHERE status IN ('pending', 'dead') GROUP BY target ORDER BY target"
    ).fetchall()
    return [TargetCounts(target, int(pending), int(dead), age) for target, pending, dead, age in rows]


class DeliveryRow(NamedTuple):
    """One row as ``inboundctl deliveries`` shows it."""

    delivery_id: str
    target: str
    kind: str
    status: str
    message_row_id: int
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    leased: bool


def listing(conn: Any, *, target: str | None = None, dead: bool = False, limit: int = 100) -> list[DeliveryRow]:
    """Pending (or, with *dead*, dead) rows, oldest first, of every target or of *target*."""
    rows = conn.execute(
        "SELECT delivery_id, target, kind, status, message_id, attempts, created_at, next_attempt_at,"
        " last_attempt_at, last_status, last_error, lease_owner IS NOT NULL"
        " FROM inbound_deliveries WHERE status = %s AND (%s::text IS NULL OR target = %s)"
        " ORDER BY id LIMIT %s",
        ("dead" if dead else "pending", target, target, limit),
    ).fetchall()
    return [DeliveryRow(*row) for row in rows]


def redeliver(conn: Any, *, delivery_ids: Sequence[str] | None = None, target: str | None = None,
              dry_run: bool = False) -> list[str]:
    """Make dead rows pending again (attempts reset, due now); returns the delivery ids moved (or that would be).

    *delivery_ids* None: every dead row (of *target* if given). Delivered and
    pending rows are never touched. The deliverers are woken on commit.
    """
    where = "status = 'dead' AND (%(target)s::text IS NULL OR target = %(target)s)" \
            " AND (%(ids)s::text[] IS NULL OR delivery_id = ANY(%(ids)s::text[]))"
    params = {"target": target, "ids": list(delivery_ids) if delivery_ids is not None else None}
    if dry_run:
        rows = conn.execute(f"SELECT delivery_id, target FROM inbound_deliveries WHERE {where} ORDER BY id",
                            params).fetchall()
    else:
        rows = conn.execute(
            "UPDATE inbound_deliveries SET status = 'pending', attempts = 0, next_attempt_at = clock_timestamp(),"
            f" lease_owner = NULL, updated_at = clock_timestamp() WHERE {where} RETURNING delivery_id, target",
            params,
        ).fetchall()
        notify(conn, {target for _, target in rows})
    return [delivery_id for delivery_id, _ in rows]
