"""Pure status assessment and rendering for ``inboundctl status`` (no I/O).

The status document (``status --json``) is assembled from the daemon's
control socket when it runs, and from Redis and PostgreSQL directly in any
case; this module decides what is a problem and how it reads. Each
provider's part (``listeners``, say) is read, judged and shown by the
provider's own :class:`StatusView`, handed in by the caller from the
provider registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

__all__ = [
    "EXIT_HEALTHY", "EXIT_DEGRADED", "EXIT_NOT_RUNNING", "StatusView", "age", "assess", "build_status",
    "deliveries_part", "render", "summary", "table",
]

EXIT_HEALTHY = 0
EXIT_DEGRADED = 1
EXIT_NOT_RUNNING = 3

#: Keys every ``queue`` part has (zero when Redis gave nothing for them).
QUEUE_KEYS = ("ready", "in_flight", "delayed", "dead")


class StatusView(Protocol):
    """How ``inboundctl status`` reads and shows one provider's part of the status document (pure)."""

    #: The top-level key of the part in the status document (``listeners``).
    key: str

    def normalize(self, part: Any, now: float) -> Any:
        """The part in its stable ``status --json`` shape (*part* is None when the daemon gave none)."""
        ...

    def problems(self, part: Any) -> list[str]:
        """What in the (normalized) part makes the daemon degraded, one line each."""
        ...

    def render(self, part: Any) -> list[str]:
        """Lines of the human summary for the part (a heading and a table), or none."""
        ...


def build_status(
    daemon: dict[str, Any] | None,
    daemon_error: str | None,
    queue: dict[str, Any] | None,
    ledger: dict[str, Any] | None,
    throughput: dict[str, float] | None,
    errors: dict[str, str],
    now: float,
    views: Sequence[StatusView] = (),
    deliveries: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the status document from what each source answered.

    *daemon* is the control socket's ``/status`` body (None when the daemon
    did not answer, *daemon_error* says why); *queue* is the queue's stats from
    Redis (None when unreachable, named in *errors*); *ledger* the last hour's
    outcomes from PostgreSQL, and *deliveries* the outbox's part
    (:func:`deliveries_part`, None when PostgreSQL did not answer). Redis is
    the source of truth for queue numbers whether or not the daemon runs.
    Each of *views* normalizes its provider's part (present even when the
    daemon gave none).
    """
    body = dict(daemon or {})
    daemon_part = dict(body.pop("daemon", {}) or {})
    if daemon is None:
        daemon_part = {"state": "not_running", "error": daemon_error or "no answer on the control socket"}
    parts = {view.key: view.normalize(body.pop(view.key, None), now) for view in views}
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
        **parts,
        "ledger": ledger,
        "deliveries": deliveries,
        "errors": dict(errors),
    }
    for key, value in body.items():  # anything more the daemon reports (consumers, …)
        status.setdefault(key, value)
    return status


def deliveries_part(counts: Sequence[tuple[str, int, int, float | None]]) -> dict[str, Any]:
    """The ``deliveries`` part from ``(target, pending, dead, oldest pending age)`` rows of the outbox."""
    ages = [age for _, pending, _, age in counts if pending and age is not None]
    return {
        "pending": sum(pending for _, pending, _, _ in counts),
        "dead": sum(dead for _, _, dead, _ in counts),
        "oldest_pending_age": round(max(ages), 3) if ages else None,
        "targets": [{"target": target, "pending": pending, "dead": dead,
                     "oldest_pending_age": round(age, 3) if age is not None else None}
                    for target, pending, dead, age in counts],
    }


def assess(status: dict[str, Any], oldest_ready_alert: float, views: Sequence[StatusView] = (),
           pending_alerts: Mapping[str, float] | None = None) -> tuple[int, list[str]]:
    """Return (exit status, problems, most severe first) for a status document (*views*: as for build_status).

    *pending_alerts*: per ``[[deliver]]`` target, the age of its oldest pending delivery that is a problem.
    """
    problems: list[str] = []
    daemon = status.get("daemon", {})
    state = daemon.get("state", "not_running")
    if state == "not_running":
        problems.append(f"daemon is not running ({daemon.get('error', 'no answer on the control socket')})")
    for name, error in sorted(status.get("errors", {}).items()):
        problems.append(f"{name} unreachable: {error}")
    for view in views:
        problems += view.problems(status.get(view.key))
    queue = status.get("queue") or {}
    if queue.get("dead"):
        problems.append(f"{queue['dead']} dead-lettered job(s): see `inboundctl dlq`")
    oldest = queue.get("oldest_ready_age")
    if oldest is not None and oldest > oldest_ready_alert:
        problems.append(f"oldest ready job waits {oldest:.0f}s (alert at {oldest_ready_alert:.0f}s)")
    problems += _delivery_problems(status, pending_alerts or {})
    if state in ("draining", "drained"):
        problems.append(f"daemon is {state}: intake is stopped (`inboundctl resume` to return to service)")
    if state in ("starting", "stopping"):
        detail = daemon.get("detail")
        problems.append(f"daemon is {state}" + (f": {detail}" if detail else ""))
    if state == "not_running":
        return EXIT_NOT_RUNNING, problems
    return (EXIT_DEGRADED if problems else EXIT_HEALTHY), problems


def summary(status: dict[str, Any], code: int, problems: list[str]) -> str:
    """The one overall line: ``healthy``, ``degraded: …``, ``draining``, ``starting: …``, ``not running: …``.

    The daemon's state speaks first (a starting, draining or stopping
    daemon is that, whatever else is wrong); otherwise the exit status does,
    naming the most severe problem.
    """
    daemon = status.get("daemon", {})
    state = daemon.get("state", "not_running")
    if state == "not_running":
        error = str(daemon.get("error") or "no answer on the control socket")
        return f"not running: {error.removeprefix('daemon is not running: ')}"
    if state in ("starting", "stopping"):
        return f"{state}: {daemon['detail']}" if daemon.get("detail") else state
    if state in ("draining", "drained"):
        return state
    if code == EXIT_HEALTHY:
        return "healthy"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"degraded: {problems[0]}{more}" if problems else "degraded"


def _delivery_problems(status: dict[str, Any], pending_alerts: Mapping[str, float]) -> list[str]:
    problems = []
    deliveries = status.get("deliveries") or {}
    for part in deliveries.get("targets", []):
        target, oldest = part["target"], part.get("oldest_pending_age")
        alert = pending_alerts.get(target)
        if part.get("dead"):
            problems.append(f"deliveries to {target}: {part['dead']} dead (`inboundctl deliveries --dead`, then "
                            "`inboundctl redeliver`)")
        if alert is not None and oldest is not None and oldest > alert:
            problems.append(f"oldest pending delivery to {target} waits {oldest:.0f}s (alert at {alert:.0f}s)")
        if alert is None and part.get("pending"):
            problems.append(f"deliveries to {target}: {part['pending']} pending, but no [[deliver]] target "
                            f"{target!r} is configured")
    for worker in (status.get("deliverer") or {}).get("targets", []):
        if worker.get("state") in ("paused", "probing"):
            problems.append(f"deliveries to {worker['target']} held back: {worker.get('last_error') or 'failing'}")
    return problems


def age(seconds: float | None) -> str:
    """Seconds as a short age: ``42s``, ``17m``, ``3.5h``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def table(rows: list[list[str]]) -> list[str]:
    """Rows as indented, aligned columns (the first row is the header, if any)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def render(status: dict[str, Any], problems: list[str], views: Sequence[StatusView] = (),
           code: int | None = None) -> str:
    """The human summary: the overall line (:func:`summary`), problems, then daemon, queue, each view's part
    (listeners), ledger.

    *code* is :func:`assess`'s exit status for the overall line (judged from *problems* when not given).
    """
    if code is None:
        code = EXIT_NOT_RUNNING if status.get("daemon", {}).get("state", "not_running") == "not_running" else (
            EXIT_DEGRADED if problems else EXIT_HEALTHY)
    lines: list[str] = [summary(status, code, problems), ""]
    if problems:
        lines.append("PROBLEMS")
        lines += [f"  ! {problem}" for problem in problems]
        lines.append("")
    daemon = status.get("daemon", {})
    lines.append("DAEMON")
    if daemon.get("state", "not_running") == "not_running":
        lines.append("  state    not_running")
    else:
        lines += table([
            ["state", str(daemon.get("state"))],
            ["pid", str(daemon.get("pid"))],
            ["version", str(daemon.get("version"))],
            ["uptime", age(daemon.get("uptime"))],
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
            ["oldest ready", age(queue.get("oldest_ready_age"))],
        ]
        if throughput:
            rows.append(["done/min", " ".join(f"{k}:{v:.1f}" for k, v in throughput.items())])
        lines += table(rows)
        for consumer, count in sorted((queue.get("in_flight_by_consumer") or {}).items()):
            lines.append(f"    {consumer}: {count} in flight")
    else:
        lines.append("  unavailable")
    for view in views:
        section = view.render(status.get(view.key))
        if section:
            lines.append("")
            lines += section
    deliveries = status.get("deliveries")
    if deliveries and deliveries.get("targets"):
        lines.append("")
        lines.append("DELIVERIES")
        rows = [["target", "pending", "dead", "oldest pending"]]
        rows += [[part["target"], str(part["pending"]), str(part["dead"]), age(part.get("oldest_pending_age"))]
                 for part in deliveries["targets"]]
        lines += table(rows)
    ledger = status.get("ledger")
    if ledger:
        lines.append("")
        lines.append(f"LEDGER (last {ledger.get('window', '1h')})")
        skipped = ledger.get("skipped", {})
        skipped_text = ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items())) or "0"
        lines += table([
            ["processed", str(ledger.get("processed", 0))],
            ["duplicate", str(ledger.get("duplicate", 0))],
            ["skipped", skipped_text],
            ["failed", str(ledger.get("failed", 0))],
        ])
    return "\n".join(lines) + "\n"
