"""How ``inboundctl status`` reads and shows the Graph subscriptions (pure: no I/O).

The daemon reports one snapshot per (account, folder) under ``microsoft``
(``renewer.FolderStatus``: wall-clock ``expires_at``, ``renewed_at``,
``last_delta_at``, ``retry_at``); :data:`VIEW` turns them into the stable
``status --json`` shape (ages and seconds to expiry relative to now), names
the ones that make the daemon degraded, and renders the SUBSCRIPTIONS table.
"""

from __future__ import annotations

from typing import Any

from ... import health

__all__ = ["BAD_STATES", "EXPIRY_WARNING", "VIEW", "SubscriptionView", "normalize_folder"]

#: Account states that make the daemon degraded.
BAD_STATES = ("backoff", "auth_failed")
#: A subscription this close to its expiry (seconds) is a problem: half-life renewal has failed for long.
EXPIRY_WARNING = 3600.0


def normalize_folder(item: dict[str, Any], now: float) -> dict[str, Any]:
    """One (account, folder) in the stable ``status --json`` shape.

    Adds ``expires_in``, ``renewed_age``, ``last_delta_age`` and ``retry_in``
    (seconds, relative to *now*), renames ``last_error`` to ``error``, keeps
    every other field.
    """
    out = dict(item)
    out["error"] = out.pop("last_error", out.get("error"))

    def relative(key: str, future: bool) -> float | None:
        value = out.get(key)
        if value is None:
            return None
        return round(value - now, 3) if future else round(max(0.0, now - value), 3)

    out["expires_in"] = relative("expires_at", True)
    out["renewed_age"] = relative("renewed_at", False)
    out["last_delta_age"] = relative("last_delta_at", False)
    retry = relative("retry_at", True)
    out["retry_in"] = max(retry, 0.0) if retry is not None else None
    return out


class SubscriptionView:
    """The ``microsoft`` part of the status document (a list, sorted by account and folder)."""

    key = "microsoft"

    def normalize(self, part: Any, now: float) -> list[dict[str, Any]]:
        folders = [normalize_folder(item, now) for item in part or []]
        folders.sort(key=lambda item: (str(item.get("account")), str(item.get("folder"))))
        return folders

    def problems(self, part: Any) -> list[str]:
        problems = []
        for item in part or []:
            where = f"microsoft {item.get('account')}/{item.get('folder')}"
            state = item.get("state")
            if state in BAD_STATES:
                detail = f": {item['error']}" if item.get("error") else ""
                problems.append(f"{where} is {state}{detail}")
            elif state == "active" and item.get("subscription_id") is None:
                problems.append(f"{where} has no subscription")
            expires_in = item.get("expires_in")
            if state == "active" and expires_in is not None and expires_in < EXPIRY_WARNING:
                problems.append(f"{where}: subscription expires in {health.age(max(expires_in, 0.0))}"
                                f" ({item.get('renew_failures', 0)} failed renewals)")
        return problems

    def render(self, part: Any) -> list[str]:
        if not part:
            return []
        rows = [["account", "folder", "state", "expires in", "last delta", "failures", "error"]]
        for item in part:
            expires_in = item.get("expires_in")
            rows.append([
                str(item.get("account")), str(item.get("folder")), str(item.get("state")),
                health.age(expires_in) if expires_in is None or expires_in >= 0 else "expired",
                health.age(item.get("last_delta_age")), str(item.get("renew_failures", 0)),
                str(item.get("error") or ""),
            ])
        return ["SUBSCRIPTIONS (Microsoft Graph)", *health.table(rows)]


VIEW = SubscriptionView()
