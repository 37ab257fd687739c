"""How ``inboundctl status`` reads and shows the Gmail accounts (pure: no I/O).

The daemon reports one snapshot per account under ``gmail`` (``renewer.WatchStatus``,
wall-clock times); :data:`VIEW` adds ages relative to now (``watch_expires_in``,
``last_renewal_age``, ``retry_in``), names what makes the daemon degraded — an
account in ``backoff`` or ``auth_failed``, a watch ``stale`` (no renewal for
48 h) or ``expired`` — and renders the GMAIL table.
"""

from __future__ import annotations

from typing import Any

from ... import health

__all__ = ["BAD_STATES", "BAD_WATCH", "VIEW", "GmailView"]

#: Renewer states that make the daemon degraded.
BAD_STATES = ("backoff", "auth_failed")
#: Watch health that makes the daemon degraded (Google stopped, or will soon stop, publishing).
BAD_WATCH = ("stale", "expired")


def _relative(value: Any, now: float, *, future: bool) -> float | None:
    if value is None:
        return None
    return round(max(0.0, (value - now) if future else (now - value)), 3)


class GmailView:
    """The ``gmail`` part of the status document (a list of accounts, sorted by account)."""

    key = "gmail"

    def normalize(self, part: Any, now: float) -> list[dict[str, Any]]:
        accounts = []
        for item in part or []:
            out = dict(item)
            out["watch_expires_in"] = _relative(out.get("watch_expiration"), now, future=True)
            out["last_renewal_age"] = _relative(out.get("last_renewal"), now, future=False)
            out["retry_in"] = _relative(out.get("retry_at"), now, future=True)
            if out.get("since") is not None:
                out["state_age"] = _relative(out["since"], now, future=False)
            accounts.append(out)
        accounts.sort(key=lambda item: str(item.get("account")))
        return accounts

    def problems(self, part: Any) -> list[str]:
        problems = []
        for item in part or []:
            name = f"gmail account {item.get('account')}"
            if item.get("state") in BAD_STATES:
                detail = f": {item['error']}" if item.get("error") else ""
                problems.append(f"{name} is {item['state']}{detail}")
            elif item.get("watch") in BAD_WATCH:
                renewed = health.age(item.get("last_renewal_age"))
                problems.append(f"{name}: watch {item['watch']} (last renewal {renewed} ago); pushes may not come")
        return problems

    def render(self, part: Any) -> list[str]:
        if not part:
            return []
        rows = [["account", "state", "watch", "expires in", "renewed", "history", "error"]]
        for item in part:
            rows.append([
                str(item.get("account")), str(item.get("state")), str(item.get("watch")),
                health.age(item.get("watch_expires_in")), health.age(item.get("last_renewal_age")),
                str(item.get("history_id") or "-"), str(item.get("error") or ""),
            ])
        return ["GMAIL", *health.table(rows)]


VIEW = GmailView()
