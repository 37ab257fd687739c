"""The whole product for a Microsoft 365 mailbox: Graph notification → daemon subprocess → Redis → PostgreSQL.

The daemon runs as a subprocess (as systemd would) against the suite's
Redis and PostgreSQL; Azure AD (https, its own CA) and Graph are the
loopback fakes in this process. Graph validates the daemon's webhook URLs,
delivers a change notification, and serves the message at consume time.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from m365_bed import MAILBOX, GraphBed, mime
from waiting import wait_for


def stored(pg_dsn: str) -> list[tuple]:
    with psycopg.connect(pg_dsn) as conn:
        return conn.execute("SELECT provider, account, provider_message_id, folder, subject FROM inbound_messages"
                            " ORDER BY id").fetchall()


def test_a_notification_becomes_a_stored_row(daemon_factory, redis_url, pg_dsn, tmp_path: Path) -> None:
    bed = GraphBed(tmp_path / "m365")
    try:
        daemon = daemon_factory(redis_url, pg_dsn, extra_config=bed.account())
        bed.port = daemon.port
        daemon.http_extra = f'public_url = "{bed.public_url}"'
        daemon.write_config()
        daemon.start()
        wait_for(lambda: bed.graph.subscriptions and daemon.events("microsoft.delta.walk"), 30,
                 what="the subscription and the first delta walk")
        (sub,) = bed.graph.subscriptions.values()
        message = bed.graph.add_message(MAILBOX, "Inbox", mime(1, "Printer out of toner"))
        response = bed.graph.notify([message], sub)
        assert response.status_code == 202
        wait_for(lambda: stored(pg_dsn), 30, what="the message in inbound_messages")
        assert stored(pg_dsn) == [("microsoft", "support-m365", message, "Inbox", "Printer out of toner 1")]
        with psycopg.connect(pg_dsn) as conn:
            assert conn.execute("SELECT identity, status FROM inbound_ledger").fetchall() == \
                [(f"graph:{message}", "processed")]
        status = daemon.control("GET", "/status").json()["microsoft"]
        assert [(s["folder"], s["state"], s["subscription_id"]) for s in status] == [("Inbox", "active", sub.id)]
        assert daemon.stop() == 0
    finally:
        bed.close()
