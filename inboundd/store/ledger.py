"""The ledger (``inbound_ledger``): one row per message identity decides "new, duplicate, retry or skip".

Statuses: ``processing`` (held by a lease owner until ``lease_expires_at``),
the terminal ``processed``, ``duplicate`` and ``skipped``, and ``failed``
(with ``last_error``). Terminal rows dedupe. A ``processing`` row whose
lease expired (its holder died between claim and commit) and a ``failed``
row are *taken over* by the next claim, ``attempts`` + 1 — a crash is a
retry, never a duplicate.

Every function takes a psycopg connection and runs in the caller's
transaction (``await db.run(ledger.claim, ...)``). Leases are measured with
PostgreSQL's clock, the one clock every instance shares.

The lease owner is a per-claim token (``"<instance>:<16 hex digits>"``,
:func:`owner_token`), not the instance name: two tasks of one daemon racing
on one identity are two owners. Every write after the claim is fenced on
that token, so a holder whose lease was taken over can no longer change the
row. A holder renews its lease while it works (:func:`renew`, one statement
for every token a daemon holds); a daemon takes back the rows an earlier
life of itself left ``processing`` (:func:`take_back`), and a claim may take
over a row whose holder is known to be dead (``claim(dead_holder=...)``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, NamedTuple, Sequence

__all__ = [
    "TERMINAL",
    "Claim",
    "ClaimRequest",
    "Failure",
    "Finish",
    "Key",
    "LedgerRow",
    "claim",
    "claim_many",
    "classify",
    "counts",
    "exists",
    "fail",
    "fail_many",
    "finish",
    "finish_many",
    "finished_within",
    "get",
    "hold",
    "hold_many",
    "is_instance_token",
    "owner_token",
    "recent_outcomes",
    "renew",
    "take_back",
]

#: Statuses that end a message's story: a later job for the identity is a duplicate.
TERMINAL = frozenset({"processed", "duplicate", "skipped"})

#: ``last_error`` is cut to this many characters.
MAX_ERROR_LENGTH = 2000

#: Hex digits after ``"<instance>:"`` in a claim token.
TOKEN_DIGITS = 16
_HEX = frozenset("0123456789abcdef")


def owner_token(instance: str, suffix: str) -> str:
    """The claim token ``"<instance>:<suffix>"``; *suffix* is :data:`TOKEN_DIGITS` lowercase hex digits."""
    if len(suffix) != TOKEN_DIGITS or not set(suffix) <= _HEX:
        raise ValueError(f"a claim token suffix is {TOKEN_DIGITS} lowercase hex digits, got {suffix!r}")
    return f"{instance}:{suffix}"


def is_instance_token(owner: str | None, instance: str) -> bool:
    """Whether *owner* is a claim token of daemon *instance* (pure).

    Exact, not a prefix test: the token of instance ``"a:b"`` is not one of
    instance ``"a"`` (``"a:b:…"`` has the wrong length and a colon in the suffix).
    """
    if owner is None or not owner.startswith(f"{instance}:"):
        return False
    suffix = owner[len(instance) + 1:]
    return len(suffix) == TOKEN_DIGITS and set(suffix) <= _HEX


class Key(NamedTuple):
    """The ledger's primary key: the message identity within its account."""

    tenant: str
    account: str
    identity: str


class LedgerRow(NamedTuple):
    tenant: str
    account: str
    identity: str
    provider: str
    status: str
    reason: str | None
    last_error: str | None
    attempts: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    job_id: str
    #: ``inbound_messages.id`` (the stored message, or the original of a duplicate).
    message_id: int | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


_COLUMNS = ", ".join(LedgerRow._fields)


class Claim(NamedTuple):
    """What :func:`claim` found: ``claimed`` (we hold it now), ``terminal`` or ``busy`` (someone else holds it)."""

    verdict: Literal["claimed", "terminal", "busy"]
    row: LedgerRow
    #: Seconds until a busy row's lease expires (PostgreSQL's clock); 0 otherwise.
    lease_remaining: float = 0.0


def classify(row: LedgerRow, owner: str) -> Literal["claimed", "terminal", "busy"]:
    """The verdict of a claim by *owner* that left *row* in the ledger (pure)."""
    if row.status == "processing" and row.lease_owner == owner:
        return "claimed"
    if row.status in TERMINAL:
        return "terminal"
    # processing under another owner's live lease (a failed or expired row
    # would have been taken over by the claim's UPDATE).
    return "busy"


#: A claim takes over a failed row and one whose lease expired (both claims below).
_TAKE_OVER = """
ON CONFLICT (tenant, account, identity) DO UPDATE
    SET status = 'processing',
        attempts = l.attempts + 1,
        lease_owner = EXCLUDED.lease_owner,
        lease_expires_at = EXCLUDED.lease_expires_at,
        job_id = EXCLUDED.job_id,
        provider = EXCLUDED.provider,
        updated_at = clock_timestamp()
    WHERE l.status = 'failed'
       OR (l.status = 'processing' AND l.lease_expires_at <= clock_timestamp())"""

_CLAIM = f"""
INSERT INTO inbound_ledger AS l
    (tenant, account, identity, provider, status, attempts, lease_owner, lease_expires_at, job_id)
VALUES (%(tenant)s, %(account)s, %(identity)s, %(provider)s, 'processing', 1, %(owner)s,
        clock_timestamp() + make_interval(secs => %(lease)s), %(job_id)s){_TAKE_OVER}
       OR (l.status = 'processing' AND l.lease_owner = %(dead_holder)s)
RETURNING {_COLUMNS}
"""


def claim(conn: Any, key: Key, *, provider: str, job_id: str, owner: str, lease: float,
          dead_holder: str | None = None) -> Claim:
    """Claim *key* for *owner* for *lease* seconds: insert, take over, or report who has it.

    Run it in a transaction of its own and commit before any slow work: the
    claim must be visible to the other consumers while this one fetches.
    Concurrent claims of one identity have exactly one ``claimed`` winner
    (the row lock of ``INSERT … ON CONFLICT`` serializes them).

    *dead_holder*: a token the caller knows is held by no live task (see
    ``claims.py``); a row still ``processing`` under exactly that token is
    taken over at once, lease or not. The condition is re-checked under the
    row lock, so a write of that holder that committed first wins (the row
    is then terminal, or released) and one that comes later is fenced out.
    """
    params = {**key._asdict(), "provider": provider, "job_id": job_id, "owner": owner, "lease": float(lease),
              "dead_holder": dead_holder}
    row = conn.execute(_CLAIM, params).fetchone()
    if row is not None:
        return Claim("claimed", LedgerRow(*row))
    found = conn.execute(
        f"SELECT {_COLUMNS}, greatest(0, extract(epoch FROM lease_expires_at - clock_timestamp()))::float8"
        " FROM inbound_ledger WHERE tenant = %s AND account = %s AND identity = %s",
        key,
    ).fetchone()
    if found is None:  # pragma: no cover - the conflicting row cannot vanish (rows are never deleted here)
        raise RuntimeError(f"ledger row {key} vanished during its claim")
    current = LedgerRow(*found[:-1])
    return Claim(classify(current, owner), current, float(found[-1] or 0.0))


def hold(conn: Any, key: Key, owner: str) -> LedgerRow | None:
    """Lock *key*'s row for the rest of the transaction; the row, or None if there is none.

    The caller still holds the claim iff ``row.status == "processing" and
    row.lease_owner == owner``; while the lock is held nobody can take it over.
    """
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM inbound_ledger WHERE tenant = %s AND account = %s AND identity = %s FOR UPDATE",
        key,
    ).fetchone()
    return LedgerRow(*row) if row else None


def finish(
    conn: Any, key: Key, owner: str, status: str, *, reason: str | None = None, message_id: int | None = None
) -> bool:
    """Move *owner*'s claim to the terminal *status*; False (nothing written) if *owner* no longer holds it."""
    if status not in TERMINAL:
        raise ValueError(f"finish() needs a terminal status, not {status!r}")
    cur = conn.execute(
        "UPDATE inbound_ledger SET status = %s, reason = %s, message_id = %s, lease_owner = NULL,"
        " lease_expires_at = NULL, updated_at = clock_timestamp(), finished_at = clock_timestamp()"
        " WHERE tenant = %s AND account = %s AND identity = %s AND status = 'processing' AND lease_owner = %s",
        (status, reason, message_id, *key, owner),
    )
    return cur.rowcount == 1


def _error_text(error: str) -> str:
    return error.replace("\x00", "\ufffd")[:MAX_ERROR_LENGTH]


def fail(conn: Any, key: Key, owner: str, error: str, *, reason: str | None = None) -> bool:
    """Record that *owner*'s attempt failed (retryable at once by the next claim); False if not held."""
    cur = conn.execute(
        "UPDATE inbound_ledger SET status = 'failed', last_error = %s, reason = %s, lease_owner = NULL,"
        " lease_expires_at = NULL, updated_at = clock_timestamp()"
        " WHERE tenant = %s AND account = %s AND identity = %s AND status = 'processing' AND lease_owner = %s",
        (_error_text(error), reason, *key, owner),
    )
    return cur.rowcount == 1


def renew(conn: Any, owners: Sequence[str], lease: float) -> list[str]:
    """Extend to *lease* seconds from now the lease of every row still ``processing`` under one of *owners*.

    Returns the owners renewed. One statement for all of them; a row locked
    by a transaction at this moment (its holder is storing it) is skipped,
    not waited for, and is simply not in the result this time.
    """
    if not owners:
        return []
    rows = conn.execute(
        "WITH mine AS (SELECT tenant, account, identity FROM inbound_ledger"
        "              WHERE status = 'processing' AND lease_owner = ANY(%s) FOR UPDATE SKIP LOCKED)"
        " UPDATE inbound_ledger l SET lease_expires_at = clock_timestamp() + make_interval(secs => %s)"
        " FROM mine WHERE (l.tenant, l.account, l.identity) = (mine.tenant, mine.account, mine.identity)"
        " RETURNING l.lease_owner",
        (list(owners), float(lease)),
    ).fetchall()
    return [owner for (owner,) in rows]


def take_back(conn: Any, instance: str, *, keep: str, error: str) -> list[LedgerRow]:
    """Release every row left ``processing`` by an earlier life of daemon *instance*: → ``failed`` with *error*.

    Tokens starting with *keep* (``"<instance>:<this life's prefix>"``) are
    left alone: they belong to the running life. The next claim of a
    released row takes it over at once (``attempts`` + 1, as for any retry),
    and a write of the old holder — a process that was only paused — finds
    the row no longer its own. Returns the rows as they were before.
    """
    rows = conn.execute(
        f"WITH old AS (SELECT {_COLUMNS} FROM inbound_ledger"
        "              WHERE status = 'processing' AND starts_with(lease_owner, %(prefix)s)"
        "                AND substr(lease_owner, %(suffix_at)s) ~ '^[0-9a-f]{16}$'"
        "                AND NOT starts_with(lease_owner, %(keep)s)"
        "              FOR UPDATE)"
        " UPDATE inbound_ledger l SET status = 'failed', last_error = %(error)s, lease_owner = NULL,"
        "     lease_expires_at = NULL, updated_at = clock_timestamp()"
        " FROM old WHERE (l.tenant, l.account, l.identity) = (old.tenant, old.account, old.identity)"
        f" RETURNING {', '.join('old.' + column for column in LedgerRow._fields)}",
        {"prefix": f"{instance}:", "suffix_at": len(instance) + 2, "keep": keep, "error": error[:MAX_ERROR_LENGTH]},
    ).fetchall()
    return [LedgerRow(*row) for row in rows]


# ---------------------------------------------------------------------------- batches


class ClaimRequest(NamedTuple):
    """One identity of a batch claim (:func:`claim_many`)."""

    key: Key
    provider: str
    job_id: str
    owner: str


_CLAIM_MANY = f"""
INSERT INTO inbound_ledger AS l
    (tenant, account, identity, provider, status, attempts, lease_owner, lease_expires_at, job_id)
SELECT v.tenant, v.account, v.identity, v.provider, 'processing', 1, v.owner,
       clock_timestamp() + make_interval(secs => %(lease)s), v.job_id
FROM unnest(%(tenant)s::text[], %(account)s::text[], %(identity)s::text[], %(provider)s::text[],
            %(owner)s::text[], %(job_id)s::text[]) AS v(tenant, account, identity, provider, owner, job_id)
ORDER BY v.tenant, v.account, v.identity{_TAKE_OVER}
RETURNING {_COLUMNS}
"""

_KEYS = "unnest(%(tenant)s::text[], %(account)s::text[], %(identity)s::text[]) AS k(tenant, account, identity)"


def _key_arrays(keys: Sequence[Key]) -> dict[str, list[str]]:
    return {"tenant": [k.tenant for k in keys], "account": [k.account for k in keys],
            "identity": [k.identity for k in keys]}


def claim_many(conn: Any, requests: Sequence[ClaimRequest], *, lease: float) -> list[Claim]:
    """:func:`claim` for many identities in one statement (plus one to read the rows not claimed).

    The keys must be distinct. Rows are locked in key order, the order every
    batch statement here uses, so concurrent batches cannot deadlock. Returns
    one :class:`Claim` per request, in order, with :func:`claim`'s verdicts.
    Run it in a transaction of its own and commit before any slow work.
    """
    if not requests:
        return []
    keys = [r.key for r in requests]
    if len(set(keys)) != len(keys):
        raise ValueError("claim_many() needs distinct keys")
    params = {**_key_arrays(keys), "provider": [r.provider for r in requests],
              "owner": [r.owner for r in requests], "job_id": [r.job_id for r in requests], "lease": float(lease)}
    claimed = {Key(*row[:3]): LedgerRow(*row) for row in conn.execute(_CLAIM_MANY, params).fetchall()}
    others: dict[Key, tuple[LedgerRow, float]] = {}
    missing = [k for k in keys if k not in claimed]
    if missing:
        for found in conn.execute(
            f"SELECT {', '.join('l.' + c for c in LedgerRow._fields)},"
            " greatest(0, extract(epoch FROM l.lease_expires_at - clock_timestamp()))::float8"
            f" FROM {_KEYS} JOIN inbound_ledger l USING (tenant, account, identity)",
            _key_arrays(missing),
        ).fetchall():
            row = LedgerRow(*found[:-1])
            others[Key(row.tenant, row.account, row.identity)] = (row, float(found[-1] or 0.0))
    out = []
    for request in requests:
        row = claimed.get(request.key)
        if row is not None:
            out.append(Claim("claimed", row))
            continue
        if request.key not in others:  # pragma: no cover - rows are never deleted here
            raise RuntimeError(f"ledger row {request.key} vanished during its claim")
        current, remaining = others[request.key]
        out.append(Claim(classify(current, request.owner), current, remaining))
    return out


def hold_many(conn: Any, keys: Sequence[Key]) -> dict[Key, LedgerRow]:
    """:func:`hold` for many keys in one statement, locking in key order; the rows found, by key."""
    if not keys:
        return {}
    rows = conn.execute(
        f"SELECT {', '.join('l.' + c for c in LedgerRow._fields)} FROM inbound_ledger l"
        f" WHERE (l.tenant, l.account, l.identity) IN (SELECT * FROM {_KEYS})"
        " ORDER BY l.tenant, l.account, l.identity FOR UPDATE OF l",
        _key_arrays(keys),
    ).fetchall()
    return {Key(*row[:3]): LedgerRow(*row) for row in rows}


class Finish(NamedTuple):
    """One terminal write of :func:`finish_many`."""

    key: Key
    owner: str
    status: str
    reason: str | None = None
    message_id: int | None = None


def finish_many(conn: Any, items: Sequence[Finish]) -> set[Key]:
    """:func:`finish` for many rows in one statement; the keys written (a row *owner* no longer holds is not)."""
    if not items:
        return set()
    for item in items:
        if item.status not in TERMINAL:
            raise ValueError(f"finish_many() needs terminal statuses, not {item.status!r}")
    rows = conn.execute(
        "UPDATE inbound_ledger l SET status = v.status, reason = v.reason, message_id = v.message_id,"
        " lease_owner = NULL, lease_expires_at = NULL, updated_at = clock_timestamp(), finished_at = clock_timestamp()"
        " FROM unnest(%(tenant)s::text[], %(account)s::text[], %(identity)s::text[], %(owner)s::text[],"
        "             %(status)s::text[], %(reason)s::text[], %(message_id)s::bigint[])"
        "      AS v(tenant, account, identity, owner, status, reason, message_id)"
        " WHERE l.tenant = v.tenant AND l.account = v.account AND l.identity = v.identity"
        "   AND l.status = 'processing' AND l.lease_owner = v.owner"
        " RETURNING l.tenant, l.account, l.identity",
        {**_key_arrays([i.key for i in items]), "owner": [i.owner for i in items],
         "status": [i.status for i in items], "reason": [i.reason for i in items],
         "message_id": [i.message_id for i in items]},
    ).fetchall()
    return {Key(*row) for row in rows}


class Failure(NamedTuple):
    """One failed attempt of :func:`fail_many`."""

    key: Key
    owner: str
    error: str
    reason: str | None = None


def fail_many(conn: Any, items: Sequence[Failure]) -> set[Key]:
    """:func:`fail` for many rows in one statement; the keys written (a row *owner* no longer holds is not)."""
    if not items:
        return set()
    rows = conn.execute(
        "UPDATE inbound_ledger l SET status = 'failed', last_error = v.error, reason = v.reason,"
        " lease_owner = NULL, lease_expires_at = NULL, updated_at = clock_timestamp()"
        " FROM unnest(%(tenant)s::text[], %(account)s::text[], %(identity)s::text[], %(owner)s::text[],"
        "             %(error)s::text[], %(reason)s::text[]) AS v(tenant, account, identity, owner, error, reason)"
        " WHERE l.tenant = v.tenant AND l.account = v.account AND l.identity = v.identity"
        "   AND l.status = 'processing' AND l.lease_owner = v.owner"
        " RETURNING l.tenant, l.account, l.identity",
        {**_key_arrays([i.key for i in items]), "owner": [i.owner for i in items],
         "error": [_error_text(i.error) for i in items], "reason": [i.reason for i in items]},
    ).fetchall()
    return {Key(*row) for row in rows}


def get(conn: Any, key: Key) -> LedgerRow | None:
    """The row of *key*, or None."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM inbound_ledger WHERE tenant = %s AND account = %s AND identity = %s", key
    ).fetchone()
    return LedgerRow(*row) if row else None


# ---------------------------------------------------------------------------- reports


def exists(conn: Any) -> bool:
    """Whether the ledger table exists (a database ``inboundctl migrate`` has not set up has none)."""
    return bool(conn.execute("SELECT to_regclass('inbound_ledger') IS NOT NULL").fetchone()[0])


def counts(conn: Any, *, account: str | None = None) -> dict[str, int]:
    """Rows per status, of every account or of *account* only (statuses without rows are absent)."""
    if account is None:
        rows = conn.execute("SELECT status, count(*) FROM inbound_ledger GROUP BY status").fetchall()
    else:
        rows = conn.execute("SELECT status, count(*) FROM inbound_ledger WHERE account = %s GROUP BY status",
                            (account,)).fetchall()
    return {status: int(n) for status, n in rows}


def recent_outcomes(conn: Any, minutes: int) -> list[tuple[str, str | None, int]]:
    """``(status, reason, rows)`` of the rows updated within the last *minutes* (by PostgreSQL's clock)."""
    rows = conn.execute(
        "SELECT status, reason, count(*) FROM inbound_ledger"
        " WHERE updated_at > now() - make_interval(mins => %s) GROUP BY status, reason",
        (minutes,),
    ).fetchall()
    return [(status, reason, int(n)) for status, reason, n in rows]


def finished_within(conn: Any, windows: Sequence[int]) -> list[int]:
    """For each window of *windows* minutes: rows that reached a terminal status within it.

    A row counts by its ``updated_at``, so a row finished and then touched
    again counts at its last change; one scan serves every window.
    """
    if not windows:
        return []
    columns = ", ".join(["count(*) FILTER (WHERE updated_at > now() - make_interval(mins => %s))"] * len(windows))
    row = conn.execute(
        f"SELECT {columns} FROM inbound_ledger WHERE status = ANY(%s)"
        " AND updated_at > now() - make_interval(mins => %s)",
        (*windows, sorted(TERMINAL), max(windows)),
    ).fetchone()
    return [int(n) for n in row]
