"""What happened to this email? The ``inboundctl trace`` document and its rendering (pure, no I/O).

A trace starts from what the operator has: a job id (from a log line), a
message identity (``imap:INBOX:7:42``), or a Message-ID. The caller finds
the ledger rows, stored rows and queue places involved (``store/lookup.py``,
``Queue.find_jobs``) and hands them here as plain dicts; :func:`build`
groups them per message identity and says in one line what happened to each
(:func:`outcome`), :func:`render` prints it on one screen, and the
``--json`` form is the document itself.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Literal

from .health import age

__all__ = ["build", "classify_query", "outcome", "render"]

#: A job id: what ``jobs.new_job`` makes (uuid4 hex).
_JOB_ID = re.compile(r"[0-9a-f]{32}")
#: Identities as the providers' pointers make them (``jobs.*Pointer.identity``).
_IDENTITY = re.compile(r"(imap|graph|gmail|gmail-history):.+")

Query = Literal["job_id", "identity", "message_id"]


def classify_query(text: str) -> tuple[Query, str]:
    """What *text* is (a job id, an identity or a Message-ID) and its normalized form.

    A Message-ID may be given with or without its angle brackets. Raises
    ``ValueError`` saying what is accepted when *text* is none of them.
    """
    value = text.strip()
    if _JOB_ID.fullmatch(value.lower()):
        return "job_id", value.lower()
    if _IDENTITY.fullmatch(value):
        return "identity", value
    bare = value[1:-1].strip() if value.startswith("<") and value.endswith(">") else value
    if "@" in bare and not any(c.isspace() for c in bare):
        return "message_id", bare
    raise ValueError(f"{text!r} is not a job id (32 hex digits), a message identity (imap:FOLDER:UIDVALIDITY:UID, "
                     "graph:ID, gmail:ID) or a Message-ID (local@domain)")


def _key(tenant: Any, account: Any, identity: Any) -> tuple[str, str, str]:
    return str(tenant), str(account), str(identity)


def build(by: Query, value: str, ledger: list[dict[str, Any]], stored: list[dict[str, Any]],
          places: list[dict[str, Any]], now: float) -> dict[str, Any]:
    """The trace document: one entry per message identity involved, each with its outcome.

    *ledger* are ledger rows and *stored* stored-message rows (as dicts of
    their columns), *places* the queue places of the jobs found
    (``JobPlace`` as builtins, with the decoded ``job``). A dead letter whose
    payload could not be decoded has no identity: it is listed under
    ``unplaced``.
    """
    messages: dict[tuple[str, str, str], dict[str, Any]] = {}

    def entry(key: tuple[str, str, str], provider: Any = None) -> dict[str, Any]:
        found = messages.setdefault(key, {"tenant": key[0], "account": key[1], "identity": key[2],
                                          "provider": None, "ledger": None, "stored": None, "jobs": []})
        found["provider"] = found["provider"] or provider
        return found

    for row in ledger:
        entry(_key(row["tenant"], row["account"], row["identity"]), row["provider"])["ledger"] = row
    by_id = {row["id"]: row for row in stored}
    for row in stored:
        entry(_key(row["tenant"], row["account"], row["identity"]), row["provider"])["stored"] = row
    unplaced = []
    for place in places:
        job = place.get("job")
        if job is None:
            unplaced.append(place)
            continue
        pointer = job["pointer"]
        key = _key(job["tenant"], pointer["account"], place["identity"])
        entry(key, pointer["provider"])["jobs"].append(place)
    for item in messages.values():
        ledger_row = item["ledger"]
        if ledger_row and ledger_row.get("status") == "duplicate" and ledger_row.get("message_id") in by_id:
            item["original"] = by_id[ledger_row["message_id"]]
        item["outcome"] = outcome(item, now)
    return {"query": {"by": by, "value": value}, "messages": list(messages.values()), "unplaced": unplaced,
            "found": bool(messages or unplaced)}


def _when(stamp: Any) -> str:
    """A time (datetime, or wall-clock seconds) as ``2026-11-28T10:00:00Z``."""
    if stamp is None:
        return "-"
    moment = stamp if isinstance(stamp, datetime) else datetime.fromtimestamp(float(stamp), timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds(stamp: Any) -> float | None:
    if stamp is None:
        return None
    return stamp.timestamp() if isinstance(stamp, datetime) else float(stamp)


def _in(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"in {age(seconds)}" if seconds >= 0 else f"{age(-seconds)} ago"


def place_line(place: dict[str, Any], now: float) -> str:
    """Where one job is, in a line: ready, in flight (holder, lease), delayed (until), dead (why)."""
    job = place.get("job") or {}
    attempt = f", attempt {job['attempt']}" if job.get("attempt") else ""
    state = place["state"]
    if state == "ready":
        return f"ready since {_when(place.get('since'))} ({age(now - place['since'])}){attempt}"
    if state == "in_flight":
        remaining = place.get("lease_remaining")
        lease = (f"lease expires {_in(remaining)}" if remaining is not None and remaining >= 0
                 else f"lease expired {age(-(remaining or 0))} ago (the reclaim timer takes it back)")
        return (f"in flight, held by {place.get('holder')}, {lease}, delivered {place.get('deliveries')} "
                f"time(s){attempt}")
    if state == "delayed":
        due = place.get("due_at")
        return f"delayed until {_when(due)} ({_in(due - now if due is not None else None)}){attempt}"
    error = " ".join(str(place.get("last_error") or "").split())
    return (f"dead since {_when(place.get('since'))}: {place.get('reason')} after {place.get('attempts')} "
            f"attempt(s){': ' + error if error else ''}")


def outcome(item: dict[str, Any], now: float) -> str:
    """What happened to one message, in one line (the ledger decides; the queue says what is pending)."""
    ledger = item.get("ledger") or {}
    status = ledger.get("status")
    jobs = item.get("jobs") or []
    pending = next((place for place in jobs if place["state"] != "dead"), None)
    dead = next((place for place in jobs if place["state"] == "dead"), None)
    if status == "processed":
        return f"stored as inbound_messages.id {ledger.get('message_id')}"
    if status == "duplicate":
        return (f"duplicate ({ledger.get('reason') or 'same message'}) of inbound_messages.id "
                f"{ledger.get('message_id')}: not stored again")
    if status == "skipped":
        return f"skipped: {ledger.get('reason')}"
    if dead is not None and pending is None:
        return f"dead-lettered ({dead.get('reason')}): `inboundctl redrive {dead['job_id']}` after fixing the cause"
    if status == "processing":
        expires = _seconds(ledger.get("lease_expires_at"))
        return (f"being processed by {ledger.get('lease_owner')} "
                f"(claim lease expires {_in(expires - now if expires is not None else None)})")
    if status == "failed":
        next_try = f"; next: {place_line(pending, now)}" if pending else ""
        return f"failed attempt {ledger.get('attempts')}: {ledger.get('reason') or ledger.get('last_error')}{next_try}"
    if pending is not None:
        return f"not processed yet: {place_line(pending, now)}"
    if item.get("stored"):
        return f"stored as inbound_messages.id {item['stored']['id']} (no ledger row)"
    return "unknown to the ledger and the queue"


def _cut(text: Any, width: int = 70) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _stored_line(row: dict[str, Any]) -> str:
    sender = row.get("from_address") or "-"
    if row.get("from_name"):
        sender = f"{row['from_name']} <{sender}>"
    return (f"id {row['id']}, received {_when(row.get('received_at'))}, from {_cut(sender, 40)}, "
            f"subject {_cut(row.get('subject'), 50)!r}")


def render(doc: dict[str, Any], now: float) -> str:
    """The trace on one screen: per message its outcome, ledger row, stored row and queue jobs.

    The sources that could not be asked (``doc["errors"]``) are named last.
    """
    query = doc["query"]
    errors = doc.get("errors") or {}
    lines = [f"TRACE {query['by'].replace('_', ' ')} {query['value']}"]
    problems = [f"! {name}: {error}" for name, error in sorted(errors.items())]
    if not doc["found"]:
        asked = "the ledger, the store or the queue" if not errors else "what could be asked (see below)"
        lines.append(f"  nothing found in {asked}")
        if query["by"] == "message_id":
            lines.append("  (a Message-ID is known once the message is stored; before that, trace its job id "
                         "or identity from the logs or `inboundctl dlq`)")
        return "\n".join(lines + problems) + "\n"
    for item in doc["messages"]:
        lines.append("")
        lines.append(f"{item['identity']}  account {item['account']}  tenant {item['tenant']}"
                     f"  provider {item.get('provider') or '-'}")
        rows = [["outcome", item["outcome"]]]
        ledger = item.get("ledger")
        if ledger:
            rows.append(["ledger", f"{ledger['status']}, attempts {ledger['attempts']}, job {ledger['job_id']}"
                                   + (f", reason {ledger['reason']}" if ledger.get("reason") else "")])
            rows.append(["", f"created {_when(ledger.get('created_at'))}, updated {_when(ledger.get('updated_at'))}"
                             f", finished {_when(ledger.get('finished_at'))}"])
            if ledger.get("lease_owner"):
                rows.append(["", f"claimed by {ledger['lease_owner']} until {_when(ledger.get('lease_expires_at'))}"])
            if ledger.get("last_error"):
                rows.append(["", f"last error: {_cut(ledger['last_error'], 100)}"])
        else:
            rows.append(["ledger", "no row (never claimed by a consumer)"])
        if item.get("stored"):
            rows.append(["stored", _stored_line(item["stored"])])
        if item.get("original"):
            rows.append(["original", _stored_line(item["original"])])
        for index, place in enumerate(item["jobs"] or [None]):
            label = "queue" if index == 0 else ""
            rows.append([label, f"job {place['job_id']}: {place_line(place, now)}" if place else "no job queued"])
        width = max(len(label) for label, _ in rows)
        lines += [f"  {label.ljust(width)}  {value}" for label, value in rows]
    for place in doc["unplaced"]:
        lines.append("")
        lines.append(f"job {place['job_id']} (payload not decodable): {place_line(place, now)}")
    if problems:
        lines += ["", *problems]
    return "\n".join(lines) + "\n"
