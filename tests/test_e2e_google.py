"""The whole product for Gmail: Pub/Sub push → daemon → Redis → consumer → Gmail fetch → PostgreSQL.

The daemon runs as a subprocess (as systemd would) against the private Redis
and PostgreSQL; Google is the loopback fake_google (tests/google_fake.py) running in
this test process.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import psycopg

from google_fake import push_body
from google_helpers import MAILBOX, google_section
from waiting import wait_for


def stored(pg_dsn: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(pg_dsn) as conn:
        return conn.execute("SELECT provider, provider_message_id, subject FROM inbound_messages ORDER BY id").fetchall()


def test_a_push_is_stored_once(daemon_factory, redis_url, pg_dsn, fake_google, tmp_path: Path) -> None:
    daemon = daemon_factory(redis_url, pg_dsn, extra_config=google_section(tmp_path, fake_google, post_action='"mark_read"'))
    daemon.start()
    wait_for(lambda: fake_google.count("watch") == 1, 30, what="users.watch on start")
    gmail = daemon.control("GET", "/status").json()["gmail"]
    assert [(a["account"], a["state"], a["watch"]) for a in gmail] == [("support-gmail", "watching", "ok")]
    assert daemon.get("/readyz").json()["checks"]["google_certs"] == "ok"

    message_id = fake_google.add_message(MAILBOX, subject="Printer out of toner")
    token = fake_google.push_keys[0].token()
    body = push_body(MAILBOX, fake_google.mailbox(MAILBOX).history_id)

    forged = httpx.post(f"{daemon.url}/webhooks/google", content=body, timeout=10,
                        headers={"Authorization": f"Bearer {fake_google.push_keys[0].token(aud='https://evil.example')}"})
    assert forged.status_code == 403
    reply = httpx.post(f"{daemon.url}/webhooks/google", content=body, timeout=10,
                       headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert reply.status_code == 204

    wait_for(lambda: stored(pg_dsn), 30, what="the message in inbound_messages")
    assert stored(pg_dsn) == [("google", message_id, "Printer out of toner")]
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT status, identity FROM inbound_ledger").fetchall() == [
            ("processed", f"gmail:{message_id}")]
    wait_for(lambda: "UNREAD" not in fake_google.mailbox(MAILBOX).messages[message_id].labels, 10,
             what="the mark_read post-action")

    # Redelivered by Pub/Sub: acknowledged, walked as covered, nothing stored twice.
    assert httpx.post(f"{daemon.url}/webhooks/google", content=body, timeout=10,
                      headers={"Authorization": f"Bearer {token}"}).status_code == 204
    covered = 'inboundd_google_walks_total{account="support-gmail",result="covered"} 1.0'
    wait_for(lambda: covered in daemon.get("/metrics").text, 10, what="the redelivered push to be walked as covered")
    metrics_text = daemon.get("/metrics").text
    assert 'inboundd_google_watch_expiry_timestamp_seconds{account="support-gmail"}' in metrics_text
    assert 'inboundd_google_pushes_total{outcome="rejected",reason="wrong_audience"} 1.0' in metrics_text
    assert fake_google.count("certs") == 1
    assert daemon.stop() == 0
    assert len(stored(pg_dsn)) == 1
