"""IMAP decisions without I/O: what to search, what to enqueue, what to skip.

Everything here is a plain function fed with values; the listener and the
fetcher (``listener``, ``fetch``) only move bytes and wait, and ask
this module what to do. Tests drive these decisions directly, table by table
(``tests/test_imap_pure.py``). Retry timing and the auth-failure policy are
shared by every provider: ``inboundd.backoff`` and ``inboundd.ingress.auth``.

Vocabulary:

* a *cursor* is the persisted resume point of one (account, folder): the
  folder's UIDVALIDITY and the highest UID whose pointer job Redis
  acknowledged. Every UID at or below it is enqueued; none above it is.
* a *catch-up* turns a cursor and what the server says about the folder
  (UIDVALIDITY, UIDNEXT, the UIDs a search returned) into the UIDs to
  enqueue, in UID order, and the cursor to store after each batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import msgspec

from ...ingress.start import StartFrom, parse_start_from

__all__ = [
    "LISTENER_STATES",
    "CatchUp",
    "Cursor",
    "IdleEvents",
    "PostAction",
    "SearchPlan",
    "StartFrom",
    "batches",
    "check_fetch",
    "classify_untagged",
    "parse_post_action",
    "parse_start_from",
    "plan_catch_up",
    "plan_search",
    "uid_set",
]

#: Every state a listener reports, in the order of its life.
LISTENER_STATES = (
    "connecting",   # opening TCP/TLS, logging in, selecting the folder
    "catching_up",  # searching for and enqueueing UIDs above the cursor
    "idle",         # in IMAP IDLE, waiting for the server to say something
    "polling",      # the server has no IDLE (or idle = false): searching every poll_interval
    "backoff",      # the last attempt failed; waiting before reconnecting
    "auth_failed",  # auth_failure_limit consecutive login failures; retrying slowly
    "standby",      # another daemon holds this mailbox's lease; waiting to take over
    "stopped",      # cancelled or drained (still listed until resumed or removed)
    "closed",       # removed from the configuration: forgotten, no longer listed
)


# --------------------------------------------------------------------------- cursor and catch-up


class Cursor(msgspec.Struct, frozen=True):
    """Resume point of one folder: every UID ≤ ``last_uid`` under ``uidvalidity`` is enqueued."""

    uidvalidity: int
    last_uid: int


class SearchPlan(msgspec.Struct, frozen=True):
    """What to ask the server, and how to read its answer.

    ``criteria`` is the argument of ``UID SEARCH`` (``None``: no search is
    needed). Only UIDs strictly greater than ``after`` count — ``UID SEARCH
    UID n:*`` returns the highest message even when n is above it, because
    ``*`` is that message's UID. ``keep_last`` (when not ``None``) keeps only
    the highest N of those. ``floor`` is the cursor's ``last_uid`` when the
    search finds nothing new.
    """

    uidvalidity: int
    criteria: tuple[str, ...] | None
    after: int
    floor: int
    keep_last: int | None = None
    #: ``resume``, ``first_start``, ``uidvalidity_changed`` or ``uidnext_regressed``.
    reason: str = "resume"


def plan_search(
    cursor: Cursor | None,
    uidvalidity: int,
    uidnext: int | None,
    start_from: StartFrom,
) -> SearchPlan:
    """Decide the catch-up search for a folder just SELECTed (or re-checked in the same session).

    *uidvalidity* and *uidnext* come from the SELECT response (*uidnext* may
    be ``None``: a server need not send it). Every UID below UIDNEXT existed
    when the folder was selected, and the search runs after the SELECT, so
    when the search finds nothing newer the cursor may safely move up to
    ``uidnext - 1``.
    """
    seen_below = max(uidnext - 1, 0) if uidnext else 0
    if cursor is None:
        if start_from.kind == "all":
            return SearchPlan(uidvalidity, ("ALL",), after=0, floor=seen_below, reason="first_start")
        if start_from.kind == "last":
            return SearchPlan(uidvalidity, ("ALL",), after=0, floor=seen_below, keep_last=start_from.count,
                              reason="first_start")
        if uidnext:
            # "now": everything below UIDNEXT is old mail; nothing to search.
            return SearchPlan(uidvalidity, None, after=0, floor=seen_below, reason="first_start")
        # No UIDNEXT: learn the highest existing UID without enqueueing anything.
        return SearchPlan(uidvalidity, ("ALL",), after=0, floor=0, keep_last=0, reason="first_start")
    if cursor.uidvalidity != uidvalidity:
        # The old UIDs mean nothing any more: rescan the whole folder. Messages
        # already stored come back under new UIDs and are recognised as
        # duplicates by their Message-ID at consume time, so there is neither
        # a gap nor a second copy.
        return SearchPlan(uidvalidity, ("ALL",), after=0, floor=seen_below, reason="uidvalidity_changed")
    if uidnext and uidnext <= cursor.last_uid:
        # The server went back in UIDs without changing UIDVALIDITY (a broken
        # restore): new mail would hide below the cursor forever. Rescan.
        return SearchPlan(uidvalidity, ("ALL",), after=0, floor=seen_below, reason="uidnext_regressed")
    after = cursor.last_uid
    return SearchPlan(uidvalidity, ("UID", f"{after + 1}:*"), after=after, floor=max(after, seen_below))


class CatchUp(msgspec.Struct, frozen=True):
    """The UIDs to enqueue (ascending, unique) and the cursor once all of them are acknowledged."""

    uids: tuple[int, ...]
    cursor: Cursor


def plan_catch_up(plan: SearchPlan, found: Iterable[int]) -> CatchUp:
    """Turn the UIDs a search returned into the catch-up of *plan*."""
    uids = sorted({int(uid) for uid in found if int(uid) > plan.after})
    highest = uids[-1] if uids else 0
    if plan.keep_last is not None:
        # Slicing from the end: fewer messages than N keeps them all (a start index would go negative).
        uids = uids[-plan.keep_last:] if plan.keep_last else []
    return CatchUp(tuple(uids), Cursor(plan.uidvalidity, max(plan.floor, highest)))


def batches(catch_up: CatchUp, size: int) -> list[tuple[tuple[int, ...], Cursor]]:
    """Split *catch_up* into batches of at most *size* UIDs, each with the cursor to store after it.

    The cursor after a batch is its highest UID; the last batch carries the
    final cursor (which may be higher: UIDs below UIDNEXT that are gone). A
    catch-up with no UIDs is one empty batch, so a moved cursor is still stored.
    """
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    uids = catch_up.uids
    if not uids:
        return [((), catch_up.cursor)]
    out = []
    for start in range(0, len(uids), size):
        chunk = uids[start:start + size]
        last = start + size >= len(uids)
        out.append((chunk, catch_up.cursor if last else Cursor(catch_up.cursor.uidvalidity, chunk[-1])))
    return out


# --------------------------------------------------------------------------- IDLE responses


class IdleEvents(msgspec.Struct, frozen=True):
    """What a burst of untagged responses during IDLE means for the listener."""

    #: An ``EXISTS`` (or ``RECENT``) arrived: new mail may be there, run the catch-up.
    new_mail: bool = False
    #: The server said ``BYE`` (shutting down, mailbox deleted …): its text.
    bye: str | None = None
    #: An untagged ``NO``/``BAD`` arrived: the selected mailbox may be gone or replaced
    #: (Dovecot says ``* NO Internal error`` during IDLE when it is deleted under us). Its text.
    trouble: str | None = None


def classify_untagged(lines: Iterable[bytes]) -> IdleEvents:
    """Classify raw untagged lines (``b"* 5 EXISTS"``, ``b"* OK Still here"``, ``b"* BYE …"``)."""
    new_mail = False
    bye: str | None = None
    trouble: str | None = None
    for line in lines:
        parts = line.split(None, 3)
        if len(parts) < 2 or parts[0] != b"*":
            continue
        word = parts[1].upper()
        if word == b"BYE":
            bye = line[line.upper().index(b"BYE") + 3:].strip().decode("utf-8", "replace") or "BYE"
        elif word in (b"NO", b"BAD"):
            trouble = line[2:].strip().decode("utf-8", "replace")
        elif len(parts) >= 3 and parts[1].isdigit() and parts[2].upper() in (b"EXISTS", b"RECENT"):
            new_mail = True
    return IdleEvents(new_mail=new_mail, bye=bye, trouble=trouble)


# --------------------------------------------------------------------------- post-actions and fetch


class PostAction(msgspec.Struct, frozen=True):
    """What to do with a message on the server once it is committed."""

    kind: Literal["none", "seen", "delete", "move"]
    #: Target folder of ``move``.
    folder: str = ""


def parse_post_action(text: str) -> PostAction:
    """Parse ``none``, ``seen``, ``delete`` or ``move:FOLDER``; raises ``ValueError`` naming the value."""
    value = text.strip()
    if value in ("none", "seen", "delete"):
        return PostAction(value)  # type: ignore[arg-type]
    if value.startswith("move:") and value[5:].strip():
        return PostAction("move", value[5:].strip())
    raise ValueError(f'post_action: expected "none", "seen", "delete" or "move:FOLDER", got {text!r}')


def check_fetch(
    pointer_uidvalidity: int, selected_uidvalidity: int | None, size: int | None, max_size: int
) -> tuple[str, str] | None:
    """Whether a pointed-at message can be downloaded: ``None``, or ``(reason, detail)`` to skip it.

    *size* is the server's ``RFC822.SIZE`` for the UID, ``None`` when the UID
    is gone. Reasons: ``uidvalidity_changed``, ``source_deleted``, ``oversize``.
    """
    if selected_uidvalidity is None or selected_uidvalidity != pointer_uidvalidity:
        return ("uidvalidity_changed",
                f"pointer UIDVALIDITY {pointer_uidvalidity}, folder now has {selected_uidvalidity}")
    if size is None:
        return ("source_deleted", "no message with this UID in the folder")
    if max_size and size > max_size:
        return ("oversize", f"{size} bytes exceeds the limit of {max_size}")
    return None


def uid_set(uids: Sequence[int]) -> str:
    """Compact IMAP sequence set for ascending *uids*: ``[1, 2, 3, 7] → "1:3,7"``."""
    parts: list[str] = []
    start = prev = None
    for uid in uids:
        if start is None:
            start = prev = uid
        elif uid == prev + 1:  # type: ignore[operator]
            prev = uid
        else:
            parts.append(f"{start}:{prev}" if start != prev else str(start))
            start = prev = uid
    if start is not None:
        parts.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(parts)
