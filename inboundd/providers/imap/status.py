"""How ``inboundctl status`` reads and shows the IMAP listeners (pure: no I/O).

The daemon reports one snapshot per listener under ``listeners``
(``ListenerStatus``: ``last_error``, ``last_event_at``, ``uidvalidity`` and
``last_uid``, wall-clock times); :data:`VIEW` turns them into the stable
``status --json`` shape, names the ones that make the daemon degraded, and
renders the LISTENERS table.
"""

from __future__ import annotations

from typing import Any

from ... import health

__all__ = ["BAD_LISTENER_STATES", "RECONNECTING_STATES", "VIEW", "ListenerView", "normalize_listener"]

#: Listener states that make the daemon degraded.
BAD_LISTENER_STATES = ("backoff", "auth_failed")
#: States that are a problem too after failed sessions (``failures`` > 0): the listener is not listening yet.
RECONNECTING_STATES = ("connecting", "catching_up")


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


class ListenerView:
    """The ``listeners`` part of the status document (a list, sorted by account and folder)."""

    key = "listeners"

    def normalize(self, part: Any, now: float) -> list[dict[str, Any]]:
        listeners = [normalize_listener(item, now) for item in part or []]
        listeners.sort(key=lambda item: (str(item.get("account")), str(item.get("folder"))))
        return listeners

    def problems(self, part: Any) -> list[str]:
        problems = []
        for listener in part or []:
            state = listener.get("state")
            detail = f": {listener['error']}" if listener.get("error") else ""
            name = f"listener {listener.get('account')}/{listener.get('folder')}"
            if state in BAD_LISTENER_STATES:
                problems.append(f"{name} is {state}{detail}")
            elif state in RECONNECTING_STATES and listener.get("failures"):
                problems.append(f"{name} is reconnecting after {listener['failures']} failure(s){detail}")
        return problems

    def render(self, part: Any) -> list[str]:
        if not part:
            return []
        rows = [["account", "folder", "state", "last event", "cursor", "error"]]
        for item in part:
            cursor = item.get("cursor") or {}
            cursor_text = f"{cursor.get('uidvalidity')}:{cursor.get('last_uid')}" if cursor else "-"
            rows.append([
                str(item.get("account")), str(item.get("folder")), str(item.get("state")),
                health.age(item.get("last_event_age")), cursor_text, str(item.get("error") or ""),
            ])
        return ["LISTENERS", *health.table(rows)]


VIEW = ListenerView()
