"""Graph subscription rows (``inbound_graph_subscriptions``) on the suite's PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest

from inboundd.store import graph_subscriptions as subs
from inboundd.store.migrate import migrate

T0 = 1_800_000_000.0


@pytest.fixture
def conn(pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        with connection.transaction():
            migrate(connection)
        yield connection


def row(subscription_id="sub-1", folder="Inbox", fence=1, expires_at=T0 + 3600, **changes):
    fields = dict(account="support", folder=folder, subscription_id=subscription_id,
                  resource=f"users/s@acme.com/mailFolders('{folder}')/messages",
                  notification_url="https://in.example.com/webhooks/microsoft",
                  lifecycle_url="https://in.example.com/webhooks/microsoft/lifecycle", client_state="secret",
                  tenant_id="84bd8158-6d4d-4958-8b9f-9d6445542f95", expires_at=expires_at, renewed_at=T0, fence=fence)
    fields.update(changes)
    return subs.SubscriptionRow(**fields)


def test_save_get_and_look_up_by_id(conn):
    assert subs.get(conn, "support", "Inbox") is None
    subs.save(conn, row())
    assert subs.get(conn, "support", "Inbox") == row()
    assert subs.by_id(conn, "sub-1") == row()
    assert subs.by_id(conn, "nope") is None
    assert subs.by_ids(conn, ["nope", "sub-1"]) == [row()] and subs.by_ids(conn, []) == []
    assert subs.list_all(conn) == [row()]


def test_save_replaces_the_folder_s_subscription(conn):
    subs.save(conn, row())
    assert subs.record_failure(conn, "support", "Inbox", "sub-1", "503 busy")
    assert subs.get(conn, "support", "Inbox")[-3:] == (1, "503 busy", 1)
    subs.save(conn, row("sub-2", expires_at=T0 + 7200, fence=2))
    stored = subs.get(conn, "support", "Inbox")
    assert (stored.subscription_id, stored.expires_at, stored.renew_failures, stored.last_error, stored.fence) == \
        ("sub-2", T0 + 7200, 0, None, 2)
    assert subs.by_id(conn, "sub-1") is None


def test_failure_of_a_replaced_subscription_is_not_recorded(conn):
    subs.save(conn, row("sub-2"))
    assert not subs.record_failure(conn, "support", "Inbox", "sub-1", "late")


def test_delete_only_the_named_subscription(conn):
    subs.save(conn, row("sub-1"))
    subs.save(conn, row("sub-a", folder="Archive"))
    assert not subs.delete(conn, "support", "Inbox", "sub-other")
    assert subs.delete(conn, "support", "Inbox", "sub-1")
    assert [r.subscription_id for r in subs.list_all(conn)] == ["sub-a"]


def test_repr_hides_the_client_state(conn):
    assert "secret" not in repr(row())
