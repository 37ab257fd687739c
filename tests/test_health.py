"""Pure status assessment: which states are healthy, degraded or not running."""

from __future__ import annotations

import pytest

from inboundd.health import EXIT_DEGRADED, EXIT_HEALTHY, EXIT_NOT_RUNNING, assess, render, summary
from inboundd.providers import REGISTRY

#: Every provider's part of the status document (the IMAP listeners).
VIEWS = REGISTRY.status_views()

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
        (doc(daemon={"state": "starting", "detail": "waiting for postgres (last error: refused)"}), EXIT_DEGRADED,
         "daemon is starting: waiting for postgres (last error: refused)"),
        (doc(daemon={"state": "stopping"}), EXIT_DEGRADED, "daemon is stopping"),
        (doc(errors={"redis": "connection refused"}), EXIT_DEGRADED, "redis unreachable: connection refused"),
        (doc(daemon={"state": "not_running"}), EXIT_NOT_RUNNING, "daemon is not running"),
        (doc(daemon={"state": "not_running"}, queue={**EMPTY_QUEUE, "dead": 1}), EXIT_NOT_RUNNING, "1 dead-lettered"),
    ],
)
def test_assess(status, code, fragment) -> None:
    exit_code, problems = assess(status, oldest_ready_alert=300.0, views=VIEWS)
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
    code, problems = assess(status, 300.0, VIEWS)
    text = render(status, problems, VIEWS)
    lines = text.splitlines()
    assert lines[0] == "degraded: listener sales/INBOX is auth_failed: AUTHENTICATIONFAILED (and 1 more)"
    assert lines[2] == "PROBLEMS" and "sales/INBOX is auth_failed" in lines[3]
    assert "7:42" in text and "h:1-0: 2 in flight" in text
    listener_rows = [line for line in lines if line.startswith("  support") or line.startswith("  sales")]
    assert len(listener_rows) == 2
    assert listener_rows[0].index("idle") == listener_rows[1].index("auth_failed")  # aligned columns


def test_render_not_running_still_shows_queue() -> None:
    status = doc(daemon={"state": "not_running"}, queue={**EMPTY_QUEUE, "ready": 4})
    code, problems = assess(status, 300.0, VIEWS)
    text = render(status, problems, VIEWS)
    assert code == EXIT_NOT_RUNNING
    assert "state    not_running" in text
    ready_row = next(line for line in text.splitlines() if line.strip().startswith("ready"))
    assert ready_row.split() == ["ready", "4"]


def test_build_status_normalizes_the_daemon_view() -> None:
    from inboundd.health import build_status

    daemon_body = {
        "daemon": dict(RUNNING),
        "consumers": {"count": 2, "busy": 1},
        "listeners": [
            {"account": "b", "folder": "INBOX", "state": "idle", "since": 90.0, "last_event_at": 95.0,
             "uidvalidity": 7, "last_uid": 42, "last_error": None, "retry_at": None},
            {"account": "a", "folder": "INBOX", "state": "backoff", "since": 99.0, "last_event_at": None,
             "uidvalidity": None, "last_uid": None, "last_error": "connection refused", "retry_at": 104.0},
        ],
    }
    status = build_status(daemon_body, None, {"ready": 3, "in_flight": 1, "delayed": 0, "dead": 0},
                          None, {"1m": 2.0}, {}, now=100.0, views=VIEWS)
    assert status["daemon"]["state"] == "running" and status["consumers"] == {"count": 2, "busy": 1}
    first, second = status["listeners"]
    assert (first["account"], first["error"], first["retry_in"], first["cursor"]) == ("a", "connection refused",
                                                                                     4.0, None)
    assert (second["last_event_age"], second["cursor"]) == (5.0, {"uidvalidity": 7, "last_uid": 42})
    assert status["queue"]["throughput"] == {"1m": 2.0} and status["queue"]["in_flight_by_consumer"] == {}
    code, problems = assess(status, 300.0, VIEWS)
    assert code == EXIT_DEGRADED and problems == ["listener a/INBOX is backoff: connection refused"]
    assert "consumers  2 (1 busy)" in render(status, problems, VIEWS)

    down = build_status(None, "no control socket at /run/x.sock", None, None, None, {"redis": "refused"}, now=1.0,
                        views=VIEWS)
    assert down["daemon"] == {"state": "not_running", "error": "no control socket at /run/x.sock"}
    assert down["listeners"] == []
    assert down["queue"] is None and assess(down, 300.0, VIEWS)[0] == EXIT_NOT_RUNNING


@pytest.mark.parametrize(("status", "line"), [
    (doc(), "healthy"),
    (doc(queue={**EMPTY_QUEUE, "dead": 2}), "degraded: 2 dead-lettered job(s): see `inboundctl dlq`"),
    (doc(errors={"redis": "refused"}, queue={**EMPTY_QUEUE, "dead": 1}),
     "degraded: redis unreachable: refused (and 1 more)"),
    (doc(daemon={"state": "draining"}), "draining"),
    (doc(daemon={"state": "drained"}, queue={**EMPTY_QUEUE, "dead": 2}), "drained"),
    (doc(daemon={"state": "starting", "detail": "waiting for postgres (last error: connection refused)"}),
     "starting: waiting for postgres (last error: connection refused)"),
    (doc(daemon={"state": "starting"}), "starting"),
    (doc(daemon={"state": "stopping"}), "stopping"),
    (doc(daemon={"state": "not_running", "error": "no control socket at /run/x.sock"}),
     "not running: no control socket at /run/x.sock"),
])
def test_the_overall_line_comes_first(status, line) -> None:
    code, problems = assess(status, 300.0, VIEWS)
    assert summary(status, code, problems) == line
    assert render(status, problems, VIEWS, code).splitlines()[0] == line
