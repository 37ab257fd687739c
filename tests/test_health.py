"""Pure status assessment: which states are healthy, degraded or not running."""

from __future__ import annotations

import pytest

from inboundd.health import EXIT_DEGRADED, EXIT_HEALTHY, EXIT_NOT_RUNNING, assess, render

RUNNING = {"state": "running", "pid": 10, "version": "0.1.0", "uptime": 5.0, "config": "/etc/inboundd.toml"}
EMPTY_QUEUE = {"ready": 0, "in_flight": 0, "delayed": 0, "dead": 0, "oldest_ready_age": None}


def doc(daemon=RUNNING, queue=EMPTY_QUEUE, listeners=(), errors=None):
    return {"daemon": dict(daemon), "queue": dict(queue) if queue is not None else None,
            "listeners": [dict(item) for item in listeners], "errors": errors or {}}


@pytest.mark.parametrize(
    ("status", "code", "fragment"),
    [
        (doc(), EXIT_HEALTHY, None),
        (doc(listeners=[{"account": "a", "folder": "INBOX", "state": "idle"}]), EXIT_HEALTHY, None),
        (doc(listeners=[{"account": "a", "folder": "INBOX", "state": "auth_failed", "error": "bad password"}]),
         EXIT_DEGRADED, "listener a/INBOX is auth_failed: bad password"),
        (doc(listeners=[{"account": "a", "folder": "INBOX", "state": "backoff"}]), EXIT_DEGRADED, "is backoff"),
        (doc(queue={**EMPTY_QUEUE, "dead": 2}), EXIT_DEGRADED, "2 dead-lettered job(s)"),
        (doc(queue={**EMPTY_QUEUE, "ready": 5, "oldest_ready_age": 900.0}), EXIT_DEGRADED, "oldest ready job waits 900s"),
        (doc(queue={**EMPTY_QUEUE, "ready": 5, "oldest_ready_age": 10.0}), EXIT_HEALTHY, None),
        (doc(daemon={"state": "drained"}), EXIT_DEGRADED, "daemon is drained"),
        (doc(errors={"redis": "connection refused"}), EXIT_DEGRADED, "redis unreachable: connection refused"),
        (doc(daemon={"state": "not_running"}), EXIT_NOT_RUNNING, "daemon is not running"),
        (doc(daemon={"state": "not_running"}, queue={**EMPTY_QUEUE, "dead": 1}), EXIT_NOT_RUNNING, "1 dead-lettered"),
    ],
)
def test_assess(status, code, fragment) -> None:
    exit_code, problems = assess(status, oldest_ready_alert=300.0)
    assert exit_code == code
    if fragment is None:
        assert problems == []
    else:
        assert any(fragment in problem for problem in problems), problems


def test_render_puts_problems_first_and_aligns() -> None:
    status = doc(
        queue={**EMPTY_QUEUE, "dead": 3, "in_flight_by_consumer": {"h:1-0": 2}},
        listeners=[
            {"account": "support", "folder": "INBOX", "state": "idle", "cursor": {"uidvalidity": 7, "last_uid": 42}},
            {"account": "sales", "folder": "INBOX", "state": "auth_failed", "error": "AUTHENTICATIONFAILED"},
        ],
    )
    code, problems = assess(status, 300.0)
    text = render(status, problems)
    lines = text.splitlines()
    assert lines[0] == "PROBLEMS" and "sales/INBOX is auth_failed" in lines[1]
    assert "7:42" in text and "h:1-0: 2 in flight" in text
    listener_rows = [line for line in lines if line.startswith("  support") or line.startswith("  sales")]
    assert len(listener_rows) == 2
    assert listener_rows[0].index("idle") == listener_rows[1].index("auth_failed")  # aligned columns


def test_render_not_running_still_shows_queue() -> None:
    status = doc(daemon={"state": "not_running"}, queue={**EMPTY_QUEUE, "ready": 4})
    code, problems = assess(status, 300.0)
    text = render(status, problems)
    assert code == EXIT_NOT_RUNNING
    assert "state    not_running" in text
    ready_row = next(line for line in text.splitlines() if line.strip().startswith("ready"))
    assert ready_row.split() == ["ready", "4"]
