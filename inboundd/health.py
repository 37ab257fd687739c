"""Pure status assessment and rendering for ``inboundctl status`` (no I/O).

The status document (``status --json``) is assembled from the daemon's
control socket when it runs, and from Redis and PostgreSQL directly in any
case; this module decides what is a problem and how it reads.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EXIT_HEALTHY", "EXIT_DEGRADED", "EXIT_NOT_RUNNING", "assess", "render"]

EXIT_HEALTHY = 0
EXIT_DEGRADED = 1
EXIT_NOT_RUNNING = 3

#: Listener states that make the daemon degraded.
BAD_LISTENER_STATES = ("backoff", "auth_failed")


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
        ])
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
            rows.append(["stored/min", " ".join(f"{k}:{v:.1f}" for k, v in throughput.items())])
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
