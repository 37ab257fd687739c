"""Delta reconciliation decisions without I/O: where a walk starts, how to read a page, what to enqueue.

Change notifications can be lost (throttling, a removed subscription, the
daemon down); delta query is the safety net. Per folder, ``GET
users/{mailbox}/mailFolders/{folder}/messages/delta`` pages through
``@odata.nextLink`` to a final page carrying ``@odata.deltaLink``; that link
is the cursor (kept whole in ``inbound_cursors.delta_link``: its token
carries the original query options) and the next walk starts from it and
returns only what changed since.

* First start (no cursor), as ``start_from`` says: ``now`` walks a fresh
  delta filtered to mail received from now on and enqueues nothing (the
  baseline costs one page, however big the folder); ``all`` enqueues every
  message; ``last:N`` the N most recently received.
* A stored cursor: walk from it and enqueue every message it returns.
  Duplicates of notified messages are absorbed by the ledger.
* ``410 Gone`` or ``syncStateNotFound``: the cursor is dead. Resync,
  bounded: a fresh delta filtered to ``receivedDateTime ge`` the time the
  dead cursor was saved (minus a margin), never further back than
  :data:`RESYNC_WINDOW`; everything found is enqueued.

Wire format: ../shared/PROVIDERS-NOTES.md A4. Tested in ``tests/test_microsoft_pure.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

from ...ingress.start import StartFrom
from .proto import format_graph_time, parse_graph_time

__all__ = [
    "PAGE_SIZE",
    "RESYNC_MARGIN",
    "RESYNC_WINDOW",
    "DeltaCursor",
    "DeltaFormatError",
    "DeltaMessage",
    "DeltaPage",
    "DeltaStart",
    "first_query",
    "parse_delta_page",
    "plan_delta",
    "plan_resync",
    "select_baseline",
]

#: ``Prefer: odata.maxpagesize``: messages per delta page.
PAGE_SIZE = 100
#: A bounded resync reaches this far before the dead cursor was saved (clock skew, late delivery).
RESYNC_MARGIN = 3600.0
#: … but never further back than this: a resync is bounded, not a re-import of the mailbox.
RESYNC_WINDOW = 30 * 86400.0
#: Only messages added to the folder: inboundd never acts on updates or deletions.
_CHANGE_TYPE = "created"


class DeltaFormatError(ValueError):
    """A delta page that is not what Graph documents."""


class DeltaMessage(msgspec.Struct, frozen=True):
    id: str
    #: ``receivedDateTime`` as epoch seconds, when the page carried it.
    received: float | None = None


class DeltaPage(msgspec.Struct, frozen=True):
    """One page: new messages, removed ids, and exactly one of the two links."""

    messages: tuple[DeltaMessage, ...]
    removed: tuple[str, ...]
    next_link: str | None
    delta_link: str | None


class _Removed(msgspec.Struct):
    reason: str = ""


class _Entry(msgspec.Struct, rename={"removed": "@removed", "received": "receivedDateTime"}):
    id: str
    received: str | None = None
    removed: _Removed | None = None


class _Page(msgspec.Struct, rename={"next_link": "@odata.nextLink", "delta_link": "@odata.deltaLink"}):
    value: list[_Entry]
    next_link: str | None = None
    delta_link: str | None = None


_page_decoder = msgspec.json.Decoder(_Page)


def parse_delta_page(body: bytes) -> DeltaPage:
    """Decode one delta page; :class:`DeltaFormatError` naming what is wrong.

    A page must carry ``value`` and exactly one of ``@odata.nextLink`` and
    ``@odata.deltaLink``. Entries with ``@removed`` are removals; a
    ``receivedDateTime`` that cannot be read is left out, not fatal.
    """
    try:
        page = _page_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise DeltaFormatError(f"not a delta page: {exc}") from None
    if (page.next_link is None) == (page.delta_link is None):
        which = "both" if page.next_link else "neither"
        raise DeltaFormatError(f"a delta page must carry @odata.nextLink or @odata.deltaLink, this one has {which}")
    messages: list[DeltaMessage] = []
    removed: list[str] = []
    for entry in page.value:
        if entry.removed is not None:
            removed.append(entry.id)
            continue
        received = None
        if entry.received:
            try:
                received = parse_graph_time(entry.received)
            except ValueError:
                received = None
        messages.append(DeltaMessage(entry.id, received))
    return DeltaPage(tuple(messages), tuple(removed), page.next_link, page.delta_link)


class DeltaCursor(msgspec.Struct, frozen=True):
    """The stored resume point of one folder: the whole deltaLink, and when it was saved (epoch)."""

    delta_link: str
    saved_at: float


class DeltaStart(msgspec.Struct, frozen=True):
    """Where a walk starts and what it enqueues.

    ``link`` resumes a stored cursor; otherwise the walk starts a fresh
    delta (:func:`first_query`), filtered to ``since`` when set. ``mode``:
    ``baseline`` enqueues nothing, ``all`` everything the walk returns,
    ``last`` the ``keep_last`` most recently received.
    """

    reason: Literal["first_start", "resume", "sync_reset"]
    mode: Literal["baseline", "all", "last"]
    link: str | None = None
    since: float | None = None
    keep_last: int = 0


def plan_delta(cursor: DeltaCursor | None, start_from: StartFrom, now: float) -> DeltaStart:
    """Where the next walk of a folder starts, at *now*."""
    if cursor is not None:
        return DeltaStart("resume", "all", link=cursor.delta_link)
    if start_from.kind == "all":
        return DeltaStart("first_start", "all")
    if start_from.kind == "last":
        return DeltaStart("first_start", "last", keep_last=start_from.count)
    return DeltaStart("first_start", "baseline", since=now)


def plan_resync(saved_at: float | None, now: float) -> DeltaStart:
    """The bounded resync after the cursor saved at *saved_at* was refused (410/syncStateNotFound)."""
    floor = now - RESYNC_WINDOW
    since = floor if saved_at is None else max(saved_at - RESYNC_MARGIN, floor)
    return DeltaStart("sync_reset", "all", since=min(since, now))


def first_query(since: float | None) -> dict[str, str]:
    """Query parameters of a fresh delta (the deltaLink carries them on afterwards)."""
    params = {"changeType": _CHANGE_TYPE, "$select": "id,receivedDateTime"}
    if since is not None:
        params["$filter"] = f"receivedDateTime ge {format_graph_time(since)}"
    return params


def select_baseline(start: DeltaStart, messages: Sequence[DeltaMessage]) -> list[str]:
    """The ids a first walk in ``last`` mode enqueues: the ``keep_last`` most recently received.

    Messages without ``receivedDateTime`` count as oldest. Returned oldest
    first (the order they are enqueued in). Other modes: ``baseline`` → none,
    ``all`` → every id once, in page order.
    """
    if start.mode == "baseline":
        return []
    unique: dict[str, DeltaMessage] = {}
    for message in messages:
        unique.setdefault(message.id, message)
    if start.mode == "all":
        return list(unique)
    if start.keep_last <= 0:
        return []
    ranked = sorted(unique.values(), key=lambda m: (m.received is not None, m.received or 0.0))
    return [m.id for m in ranked[-start.keep_last:]]
