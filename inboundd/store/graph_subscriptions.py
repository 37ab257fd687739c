"""Graph subscriptions in ``inbound_graph_subscriptions`` (one row per account and folder).

Every function takes a psycopg connection and runs in the caller's
transaction (``await db.run(graph_subscriptions.get, account, folder)``).
Times cross this boundary as epoch seconds. Only the account's lease owner
writes, right after confirming it still holds the lease; ``fence`` records
the lease token a row was written under, for the operator.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["SubscriptionRow", "by_id", "by_ids", "delete", "get", "list_all", "record_failure", "save"]

#: ``last_error`` is cut to this many characters.
MAX_ERROR_LENGTH = 500

_COLUMNS = (
    "account, folder, subscription_id, resource, notification_url, lifecycle_url, client_state, tenant_id,"
    " extract(epoch FROM expires_at)::float8, extract(epoch FROM renewed_at)::float8, renew_failures, last_error,"
    " fence"
)


class SubscriptionRow(NamedTuple):
    account: str
    folder: str
    subscription_id: str
    resource: str
    notification_url: str
    lifecycle_url: str
    client_state: str
    tenant_id: str | None
    expires_at: float
    renewed_at: float
    renew_failures: int = 0
    last_error: str | None = None
    fence: int = 0

    def __repr__(self) -> str:  # the secret stays out of logs and tracebacks
        return (f"SubscriptionRow(account={self.account!r}, folder={self.folder!r}, "
                f"subscription_id={self.subscription_id!r}, expires_at={self.expires_at})")


def get(conn: Any, account: str, folder: str) -> SubscriptionRow | None:
    """The subscription of (*account*, *folder*), or None."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM inbound_graph_subscriptions WHERE account = %s AND folder = %s", (account, folder)
    ).fetchone()
    return SubscriptionRow(*row) if row else None


def by_id(conn: Any, subscription_id: str) -> SubscriptionRow | None:
    """The subscription Graph knows as *subscription_id*, or None (never created here, or deleted)."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM inbound_graph_subscriptions WHERE subscription_id = %s", (subscription_id,)
    ).fetchone()
    return SubscriptionRow(*row) if row else None


def by_ids(conn: Any, subscription_ids: list[str]) -> list[SubscriptionRow]:
    """The stored subscriptions among *subscription_ids* (one query)."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM inbound_graph_subscriptions WHERE subscription_id = ANY(%s)", (subscription_ids,)
    ).fetchall()
    return [SubscriptionRow(*row) for row in rows]


def list_all(conn: Any) -> list[SubscriptionRow]:
    """Every stored subscription, by account and folder."""
    rows = conn.execute(f"SELECT {_COLUMNS} FROM inbound_graph_subscriptions ORDER BY account, folder").fetchall()
    return [SubscriptionRow(*row) for row in rows]


def save(conn: Any, row: SubscriptionRow) -> None:
    """Insert or replace the subscription of (account, folder), its failure count and error as given."""
    conn.execute(
        "INSERT INTO inbound_graph_subscriptions (account, folder, subscription_id, resource, notification_url,"
        " lifecycle_url, client_state, tenant_id, expires_at, renewed_at, renew_failures, last_error, fence)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s), to_timestamp(%s), %s, %s, %s)"
        " ON CONFLICT (account, folder) DO UPDATE SET subscription_id = EXCLUDED.subscription_id,"
        " resource = EXCLUDED.resource, notification_url = EXCLUDED.notification_url,"
        " lifecycle_url = EXCLUDED.lifecycle_url, client_state = EXCLUDED.client_state,"
        " tenant_id = EXCLUDED.tenant_id, expires_at = EXCLUDED.expires_at, renewed_at = EXCLUDED.renewed_at,"
        " renew_failures = EXCLUDED.renew_failures, last_error = EXCLUDED.last_error, fence = EXCLUDED.fence,"
        " created_at = CASE WHEN inbound_graph_subscriptions.subscription_id = EXCLUDED.subscription_id"
        "   THEN inbound_graph_subscriptions.created_at ELSE now() END",
        (row.account, row.folder, row.subscription_id, row.resource, row.notification_url, row.lifecycle_url,
         row.client_state, row.tenant_id, row.expires_at, row.renewed_at, row.renew_failures, row.last_error,
         row.fence),
    )


def record_failure(conn: Any, account: str, folder: str, subscription_id: str, error: str) -> bool:
    """Count a failed renewal of *subscription_id* with its error; False when the row moved on."""
    written = conn.execute(
        "UPDATE inbound_graph_subscriptions SET renew_failures = renew_failures + 1, last_error = %s"
        " WHERE account = %s AND folder = %s AND subscription_id = %s",
        (error[:MAX_ERROR_LENGTH], account, folder, subscription_id),
    )
    return written.rowcount == 1


def delete(conn: Any, account: str, folder: str, subscription_id: str) -> bool:
    """Forget *subscription_id* of (*account*, *folder*) (deleted at Graph, or gone); False if already replaced."""
    written = conn.execute(
        "DELETE FROM inbound_graph_subscriptions WHERE account = %s AND folder = %s AND subscription_id = %s",
        (account, folder, subscription_id),
    )
    return written.rowcount == 1
