"""From "this mailbox changed" to one pointer job per new message: the history walk.

A push names a mailbox and a historyId; its job (a ``GooglePointer`` without
``message_id``) reaches :meth:`HistoryWalker.on_push` at consume time:

1. a push whose historyId the stored cursor already covers needs nothing
   (``covered``, no Gmail call);
2. while a walk of the mailbox is in flight in this process, the push joins
   it (``joined``): the walk in flight walks once more when it ends if the
   push named a historyId beyond what it reached (``proto.WalkGate``);
3. otherwise it walks: ``history.list`` from the cursor, every page; the
   added messages that survive ``select_messages`` become one
   ``GooglePointer`` each, enqueued page by page; after Redis acknowledged a
   page the cursor moves to that page's last record, and after the last page
   to the mailbox's historyId — by compare-and-set, never backwards, so
   several consumers or daemons walking one mailbox cannot undo each other.

A cursor Gmail no longer knows (404) is replaced by a bounded *resync*: the
mailbox's current historyId is read first, then ``messages.list`` with
``q=after:<last stored message's date − margin>`` (``plan_resync``) enqueues
everything since, and the cursor moves to that historyId. Messages already
stored come back as duplicates and the ledger absorbs them.

A mailbox without a cursor starts from its current historyId (the watch's,
or the profile's): old mail is not imported.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, Literal, Protocol

import trio

from ... import clock, log, metrics
from ...ingress.cursors import CursorStore, StoredCursor
from ...jobs import GooglePointer, Job, new_job
from ...store import cursors as cursor_rows, messages
from . import proto
from .accounts import GoogleAccount
from .gmail_api import GmailError, raise_for

__all__ = ["CURSOR_FOLDER", "DbStoredDates", "HistoryWalker", "StoredDates", "WalkOutcome"]

_log = log.get_logger("google.walk")

#: Gmail keeps one cursor per mailbox: the ``folder`` of its ``inbound_cursors`` row.
CURSOR_FOLDER = ""

WalkOutcome = Literal["covered", "joined", "walked"]


class Enqueuer(Protocol):
    async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]: ...


class StoredDates(Protocol):
    """What bounds a resync: the newest stored message of the account, and when its cursor last moved."""

    async def last_stored(self, tenant: str, account: str) -> datetime | None: ...

    async def cursor_time(self, account: str, folder: str) -> datetime | None: ...


class DbStoredDates:
    """:class:`StoredDates` from PostgreSQL (``inbound_messages``, ``inbound_cursors``)."""

    def __init__(self, db: Any) -> None:
        self.db = db

    async def last_stored(self, tenant: str, account: str) -> datetime | None:
        return await self.db.run(messages.last_stored_date, tenant, account)

    async def cursor_time(self, account: str, folder: str) -> datetime | None:
        return await cursor_rows.cursor_updated_at(self.db, account, folder)


class HistoryWalker:
    """Walks mailboxes' history into pointer jobs; one per daemon, shared by its consumers and renewers."""

    def __init__(self, cursors: CursorStore, queue: Enqueuer, dates: StoredDates) -> None:
        self.cursors = cursors
        self.queue = queue
        self.dates = dates
        self._gates: dict[str, proto.WalkGate] = {}
        #: Walks started (history.list from a cursor, or a resync), for status and tests.
        self.walks = 0
        self.resyncs = 0

    def gate(self, account_id: str) -> proto.WalkGate:
        gate = self._gates.get(account_id)
        if gate is None:
            gate = self._gates[account_id] = proto.WalkGate()
        return gate

    # ------------------------------------------------------------------ entry points

    async def on_push(self, account: GoogleAccount, history_id: int, *, pubsub_message_id: str = "") -> WalkOutcome:
        """Handle one push (``history_id`` > 0) or periodic tick (0); see the module docstring.

        Returns once the walk this push needs is done and its cursor stored —
        or at once if the push is covered or joined a walk in flight. Raises
        :class:`~inboundd.outcomes.TransientError` (Gmail throttled or down,
        Redis or PostgreSQL failing), :class:`~.tokens.AuthFailure`, or a
        job error; the cursor then stays where the last acknowledged page left it.
        """
        result = await self._on_push(account, history_id, pubsub_message_id)
        metrics.google_walks.labels(account.id, result).inc()
        return result

    async def _on_push(self, account: GoogleAccount, history_id: int, pubsub_message_id: str) -> WalkOutcome:
        gate = self.gate(account.id)
        if gate.arrive(history_id) == "joined":
            return "joined"
        try:
            result: WalkOutcome = "covered"
            # The cursor is read inside the gate: a walk that ends meanwhile cannot be missed.
            stored = await self.cursors.load(account.id, CURSOR_FOLDER)
            reached = stored.history_id if stored is not None else None
            if not history_id or reached is None or reached < history_id:
                reached = await self.walk(account, pubsub_message_id=pubsub_message_id)
                result = "walked"
            while gate.finished(reached):
                reached = await self.walk(account, pubsub_message_id=pubsub_message_id)
                result = "walked"
            return result
        except BaseException:
            gate.abandoned()
            raise

    async def baseline(self, account: GoogleAccount, history_id: int) -> bool:
        """Start a mailbox without a cursor at *history_id* (from a watch); True if it had none."""
        started = await self.cursors.compare_and_set(account.id, CURSOR_FOLDER, None,
                                                     StoredCursor(history_id=history_id))
        if started:
            log.event(_log, "google.cursor.baseline", account=account.id, history_id=history_id)
        return started

    # ------------------------------------------------------------------ the walk

    async def walk(self, account: GoogleAccount, *, pubsub_message_id: str = "") -> int:
        """One walk from the stored cursor to the mailbox's current historyId; returns the cursor reached."""
        stored = await self.cursors.load(account.id, CURSOR_FOLDER)
        if stored is None or stored.history_id is None:
            current = await self._call(account, account.api.profile_history_id())
            await self.baseline(account, current)
            return await self._current(account, current)
        self.walks += 1
        started = trio.current_time()
        config = account.config
        seen: set[str] = set()
        page_token: str | None = None
        enqueued = dropped = pages = 0
        while True:
            try:
                page = await account.api.history_page(stored.history_id, config.label_ids, page_token)
            except GmailError as exc:
                if exc.kind == "not_found":
                    return await self.resync(account, stored, pubsub_message_id=pubsub_message_id)
                raise_for(exc, account.id)
            pages += 1
            selection = proto.select_messages(page.added, config.label_ids, config.skip_labels, seen)
            dropped += len(selection.dropped)
            for _, why in selection.dropped:
                metrics.google_walk_dropped.labels(account.id, why).inc()
            await self._enqueue(account, [(m.id, m.history_id) for m in selection.keep], pubsub_message_id)
            enqueued += len(selection.keep)
            if page.next_page_token is None:
                reached = page.history_id
                break
            if page.added:
                # Everything up to this page's last record is enqueued: a crash resumes from here.
                await self._advance(account.id, max(m.history_id for m in page.added))
            page_token = page.next_page_token
        await self._advance(account.id, reached)
        log.event(_log, "google.walk", account=account.id, start=stored.history_id, reached=reached, pages=pages,
                  enqueued=enqueued, dropped=dropped, seconds=round(trio.current_time() - started, 3))
        return await self._current(account, reached)

    async def resync(self, account: GoogleAccount, stale: StoredCursor, *, pubsub_message_id: str = "") -> int:
        """Gmail forgot *stale*: enqueue everything since the last stored message, then move the cursor on."""
        self.resyncs += 1
        metrics.google_walks.labels(account.id, "resync").inc()
        config = account.config
        current = await self._call(account, account.api.profile_history_id())
        last_stored = await self.dates.last_stored(config.tenant, account.id)
        cursor_time = await self.dates.cursor_time(account.id, CURSOR_FOLDER)
        plan = proto.plan_resync(last_stored, cursor_time, datetime.fromtimestamp(clock.wall(), timezone.utc))
        log.event(_log, "google.resync", level=logging.WARNING, account=account.id, stale=stale.history_id,
                  current=current, query=plan.query, bound=plan.bound)
        page_token: str | None = None
        enqueued = 0
        while True:
            listing = await self._call(account, account.api.list_messages(plan.query, config.label_ids, page_token))
            await self._enqueue(account, [(message_id, current) for message_id in listing.ids], pubsub_message_id)
            enqueued += len(listing.ids)
            if listing.next_page_token is None:
                break
            page_token = listing.next_page_token
        await self._advance(account.id, current)
        log.event(_log, "google.resync.done", account=account.id, enqueued=enqueued, reached=current)
        return await self._current(account, current)

    # ------------------------------------------------------------------ helpers

    async def _call(self, account: GoogleAccount, call):  # type: ignore[no-untyped-def]
        try:
            return await call
        except GmailError as exc:
            raise_for(exc, account.id)
            raise

    async def _enqueue(self, account: GoogleAccount, messages: list[tuple[str, int]], pubsub_message_id: str) -> None:
        if not messages:
            return
        config = account.config
        jobs = [
            new_job(GooglePointer(account=account.id, email=config.email, history_id=history_id,
                                  pubsub_message_id=pubsub_message_id, message_id=message_id),
                    tenant=config.tenant)
            for message_id, history_id in messages
        ]
        await self.queue.enqueue_many(jobs)
        metrics.google_pointers_enqueued.labels(account.id).inc(len(jobs))

    async def _advance(self, account_id: str, walked: int) -> bool:
        """Move the cursor to *walked* unless it already is there or beyond; True if this call moved it."""
        while True:
            stored = await self.cursors.load(account_id, CURSOR_FOLDER)
            target = proto.advance(stored.history_id if stored else None, walked)
            if target is None:
                return False
            new = StoredCursor(history_id=target)
            if await self.cursors.compare_and_set(account_id, CURSOR_FOLDER, stored, new):
                return True
            # Another walker moved it meanwhile: read again, and move only if still behind.

    async def _current(self, account: GoogleAccount, reached: int) -> int:
        """The stored cursor after a walk (another walker may have moved it further)."""
        stored = await self.cursors.load(account.id, CURSOR_FOLDER)
        return max(reached, stored.history_id or 0) if stored else reached
