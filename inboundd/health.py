"""Pure status assessment and rendering for ``inboundctl status`` (no I/O).

The status document (``status --json``) is assembled from the daemon's
control socket when it runs, and from Redis and PostgreSQL directly in any
case; this module decides what is a problem and how it reads.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "EXIT_HEALTHY", "EXIT_DEGRADED", "EXIT_NOT_RUNNING", "assess", "build_status", "normalize_listener", "render",
]

EXIT_HEALTHY = 0
EXIT_DEGRADED = 1
EXIT_NOT_RUNNING = 3

#: Listener states that make the daemon degraded.
BAD_LISTENER_STATES = ("backoff", "auth_failed")


#: Keys every ``queue`` part has (zero when Redis gave nothing for them).
QUEUE_KEYS = ("ready", "in_flight", "delayed", "dead")


def normalize_listener(item: dict[str, Any], now: float) -> dict[str, Any]:
    """One listener in the stable ``status --json`` shape.

    Accepts the daemon's listener snapshot (``last_error``, ``last_event_at``,
    ``uidvalidity``/``last_uid``, wall-clock times) and returns ``account``,
    ``folder``, ``state``, ``error``, ``last_event_age``, ``cursor`` and
    ``retry_in`` (seconds, relative to *now*) plus every other field unchanged.
    """
    out = dict(item)
    out.setdefault("error", out.pop("last_error", None))
    out.pop("last_error", None)
    last_event = out.get("last_event_at")
    if "last_event_age" not in out:
        out["last_event_age"] = round(max(0.0, now - last_event), 3) if last_event is not None else None
    if "cursor" not in out:
        uidvalidity, last_uid = out.get("uidvalidity"), out.get("last_uid")
        out["cursor"] = {"uidvalidity": uidvalidity, "last_uid": last_uid} if uidvalidity is not None else None
    retry_at = out.get("retry_at")
    out["retry_in"] = round(max(0.0, retry_at - now), 3) if retry_at is not None else None
    if out.get("since") is not None:
        out["state_age"] = round(max(0.0, now - out["since"]), 3)
    return out


def build_status(
    daemon: dict[str, Any] | None,
    daemon_error: str | None,
    queue: dict[str, Any] | None,
    ledger: dict[str, Any] | None,
    throughput: dict[str, float] | None,
    errors: dict[str, str],
    now: float,
) -> dict[str, Any]:
    """Assemble the status document from what each source answered.

    *daemon* is the control socket's ``/status`` body (None when the daemon
    did not answer, *daemon_error* says why); *queue* is the queue's stats from
    Redis (None when unreachable, named in *errors*); *ledger* the last hour's
    outcomes from PostgreSQL. Redis is the source of truth for queue numbers
    whether or not the daemon runs.
    """
    body = dict(daemon or {})
    daemon_part = dict(body.pop("daemon", {}) or {})
    if daemon is None:
        daemon_part = {"state": "not_running", "error": daemon_error or "no answer on the control socket"}
    listeners = [normalize_listener(item, now) for item in body.pop("listeners", []) or []]
    listeners.sort(key=lambda item: (str(item.get("account")), str(item.get("folder"))))
    body.pop("queue", None)  # the daemon's own copy; Redis is read directly below
    queue_part: dict[str, Any] | None = None
    if queue is not None:
        queue_part = dict(queue)
        for key in QUEUE_KEYS:
            queue_part[key] = int(queue_part.get(key) or 0)
        queue_part.setdefault("oldest_ready_age", None)
        queue_part.setdefault("in_flight_by_consumer", {})
        if throughput is not None:
            queue_part["throughput"] = dict(throughput)
    status: dict[str, Any] = {
        "daemon": daemon_part,
        "queue": queue_part,
        "listeners": listeners,
        "ledger": ledger,
        "errors": dict(errors),
    }
    for key, value in body.items():  # anything more the daemon reports (consumers, …)
        status.setdefault(key, value)
    return status


def assess(status: dict[str, Any], oldest_ready_alert: float) -> tuple[int, list[str]]:
    """Return (exit status, problems, most severe first) for a status document."""
    problems: list[str] = []
    daemon = status.get("daemon", {})
    state = daemon.get("state", "not_running")
    if state == "not_running":
        problems.append(f"daemon is not running ({daemon.get('error', 'no answer on the control socket')})")
    for name, error in sorted(status.get("errors", {}).items()):
        problems.append(f"{name} unreachable: {error}")
    for listener in status.get("listeners", []):
        if listener.get("state") in BAD_LISTENER_STATES:
            detail = f": {listener['error']}" if listener.get("error") else ""
            problems.append(f"listener {listener.get('account')}/{listener.get('folder')} is {listener['state']}{detail}")
    queue = status.get("queue") or {}
    if queue.get("dead"):
        problems.append(f"{queue['dead']} dead-lettered job(s): see `inboundctl dlq`")
    oldest = queue.get("oldest_ready_age")
    if oldest is not None and oldest > oldest_ready_alert:
        problems.append(f"oldest ready job waits {oldest:.0f}s (alert at {oldest_ready_alert:.0f}s)")
    if state in ("draining", "drained"):
        problems.append(f"daemon is {state}: intake is stopped (`inboundctl resume` to return to service)")
    if state == "not_running":
        return EXIT_NOT_RUNNING, problems
    return (EXIT_DEGRADED if problems else EXIT_HEALTHY), problems


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def render(status: dict[str, Any], problems: list[str]) -> str:
    """The human summary: problems first, then daemon, queue, listeners, ledger."""
    lines: list[str] = []
    if problems:
        lines.append("PROBLEMS")
        lines += [f"  ! {problem}" for problem in problems]
        lines.append("")
    daemon = status.get("daemon", {})
    lines.append("DAEMON")
    if daemon.get("state", "not_running") == "not_running":
        lines.append("  state    not_running")
    else:
        lines += _table([
            ["state", str(daemon.get("state"))],
            ["pid", str(daemon.get("pid"))],
            ["version", str(daemon.get("version"))],
            ["uptime", _age(daemon.get("uptime"))],
            ["config", str(daemon.get("config"))],
        ] + ([["consumers", f"{consumers.get('count')} ({consumers.get('busy', 0)} busy)"]]
             if (consumers := status.get("consumers")) else []))
    queue = status.get("queue")
    lines.append("")
    lines.append("QUEUE")
    if queue:
        throughput = queue.get("throughput", {})
        rows = [
            ["ready", str(queue.get("ready", 0))],
            ["in flight", str(queue.get("in_flight", 0))],
            ["delayed", str(queue.get("delayed", 0))],
            ["dead", str(queue.get("dead", 0))],
            ["oldest ready", _age(queue.get("oldest_ready_age"))],
        ]
        if throughput:
            rows.append(["done/min", " ".join(f"{k}:{v:.1f}" for k, v in throughput.items())])
        lines += _table(rows)
        for consumer, count in sorted((queue.get("in_flight_by_consumer") or {}).items()):
            lines.append(f"    {consumer}: {count} in flight")
    else:
        lines.append("  unavailable")
    listeners = status.get("listeners", [])
    if listeners:
        lines.append("")
        lines.append("LISTENERS")
        rows = [["account", "folder", "state", "last event", "cursor", "error"]]
        for item in listeners:
            cursor = item.get("cursor") or {}
            cursor_text = f"{cursor.get('uidvalidity')}:{cursor.get('last_uid')}" if cursor else "-"
            rows.append([
                str(item.get("account")), str(item.get("folder")), str(item.get("state")),
                _age(item.get("last_event_age")), cursor_text, str(item.get("error") or ""),
            ])
        lines += _table(rows)
    ledger = status.get("ledger")
    if ledger:
        lines.append("")
        lines.append(f"LEDGER (last {ledger.get('window', '1h')})")
        skipped = ledger.get("skipped", {})
        skipped_text = ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items())) or "0"
        lines += _table([
            ["processed", str(ledger.get("processed", 0))],
            ["duplicate", str(ledger.get("duplicate", 0))],
            ["skipped", skipped_text],
            ["failed", str(ledger.get("failed", 0))],
        ])
    return "\n".join(lines) + "\n"
