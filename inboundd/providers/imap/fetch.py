"""IMAP at consume time: fetch the message a pointer names, and post-actions after commit.

:class:`ImapFetcher` is the IMAP implementation of the processing layer's
``Source`` protocol. For each job it takes a connection from a small
per-account pool (``fetch_connections``, reused across jobs), EXAMINEs the
folder — every time, so the UIDVALIDITY compared with the pointer is the
current one — asks for ``RFC822.SIZE`` first (an oversize message is never
downloaded), then ``UID FETCH <uid> (BODY.PEEK[] RFC822.SIZE INTERNALDATE
FLAGS)``. ``BODY.PEEK`` in a read-only EXAMINE: fetching never sets
``\\Seen``. A message that is gone, or whose folder changed UIDVALIDITY, is a
deterministic :class:`SourceUnavailable`, never a retry loop.
:meth:`ImapFetcher.fetch_many` does the same for a batch of jobs with one
connection and two ``UID FETCH`` commands per folder (sizes for all UIDs,
then the bodies of those within the limit), with the same result per job.

Post-actions (``seen``, ``move:<folder>``, ``delete``) run from
:meth:`ImapFetcher.after_commit`, i.e. only once the message is committed.
They SELECT the folder read-write and act only if its UIDVALIDITY still is
the pointer's: a UID under another UIDVALIDITY is another message.
"""

from __future__ import annotations

import imaplib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any, TypeVar

import trio
from imapclient.imapclient import seq_to_parenstr_upper
from imapclient.response_parser import parse_fetch_response

from ... import log, metrics
from ...jobs import ImapPointer, Job
from ...outcomes import Outcome, TransientError
from ...source import FetchedMessage, SourceUnavailable
from . import proto
from .conn import (
    AuthError,
    Connection,
    ConnectionLost,
    FolderError,
    ImapAccount,
    ImapError,
    default_limiter,
    describe,
)

__all__ = ["ImapFetcher"]

_log = log.get_logger("imap.fetch")

#: A pooled connection unused this long is closed rather than reused (servers log idle clients out).
POOL_IDLE_MAX = 240.0

_FETCH_ITEMS = [b"BODY.PEEK[]", b"RFC822.SIZE", b"INTERNALDATE", b"FLAGS"]
#: Bytes (by RFC822.SIZE) of the bodies one ``UID FETCH`` of :meth:`ImapFetcher.fetch_many` downloads at most.
FETCH_MANY_BYTES = 32 * 1024 * 1024
T = TypeVar("T")
#: A fetch refused at login waits at least this long (a wrong password is not fixed in seconds).
AUTH_RETRY_AFTER = 60.0
#: Errors after which a *reused* connection is presumed stale and the job is tried once on a fresh one.
_STALE = (OSError, imaplib.IMAP4.abort, ConnectionLost)


class _Pool:
    """Up to ``fetch_connections`` authenticated connections of one account."""

    def __init__(self, account: ImapAccount, limiter: trio.CapacityLimiter) -> None:
        self.account = account
        self.limiter = limiter
        self.slots = trio.Semaphore(account.config.fetch_connections)
        self.idle: list[tuple[Connection, float]] = []
        self.closed = False

    @asynccontextmanager
    async def connection(self, *, reuse: bool = True) -> AsyncIterator[tuple[Connection, bool]]:
        """A connection for one job (a pooled one unless not *reuse*), and whether it is freshly opened.

        Returned to the pool only when the job's use ended without error;
        otherwise closed (LOGOUT if possible, shielded and bounded).
        """
        async with self.slots:
            conn: Connection | None = None
            now = trio.current_time()
            while reuse and self.idle and conn is None:
                candidate, last_used = self.idle.pop()
                if now - last_used < POOL_IDLE_MAX and candidate.usable:
                    conn = candidate
                else:
                    await candidate.aclose()
            fresh = conn is None
            if conn is None:
                conn = await Connection.open(self.account, self.limiter)
            ok = False
            try:
                yield conn, fresh
                ok = True
            finally:
                if ok and conn.usable and not self.closed:
                    self.idle.append((conn, trio.current_time()))
                else:
                    await conn.aclose()

    async def aclose(self) -> None:
        """Log out every idle connection at once (busy ones close when their job ends).

        Each close is bounded by ``CLOSE_TIMEOUT``, and they run concurrently, so
        this returns within about that long however many connections there are.
        """
        self.closed = True
        idle, self.idle = self.idle, []
        async with trio.open_nursery() as nursery:
            for conn, _ in idle:
                nursery.start_soon(conn.aclose)


class ImapFetcher:
    """The IMAP ``Source``: :meth:`fetch` at consume time, :meth:`after_commit` for post-actions.

    Construct with the accounts (``accounts_from_config(cfg)``); call
    :meth:`update` after a reload and :meth:`aclose` at shutdown.
    """

    def __init__(self, accounts: Iterable[ImapAccount], *, limiter: trio.CapacityLimiter | None = None) -> None:
        self.limiter = limiter or default_limiter()
        self._accounts: dict[str, ImapAccount] = {}
        self._pools: dict[str, _Pool] = {}
        self._retired: list[_Pool] = []
        self.update(accounts)

    def update(self, accounts: Iterable[ImapAccount]) -> None:
        """Use a reloaded account list; pools of changed or removed accounts are retired.

        Jobs in flight finish on their old connection; :meth:`aclose` logs out
        the retired pools' idle connections.
        """
        new = {a.id: a for a in accounts}
        for account_id, pool in list(self._pools.items()):
            if account_id not in new or new[account_id].fingerprint() != pool.account.fingerprint():
                pool.closed = True
                self._retired.append(self._pools.pop(account_id))
        self._accounts = new

    async def aclose(self) -> None:
        """Log out every pooled connection, all at once; bounded by ``CLOSE_TIMEOUT`` overall."""
        pools = list(self._pools.values()) + self._retired
        self._pools, self._retired = {}, []
        async with trio.open_nursery() as nursery:
            for pool in pools:
                nursery.start_soon(pool.aclose)

    def _pool(self, account_id: str) -> _Pool:
        pool = self._pools.get(account_id)
        if pool is None:
            account = self._accounts.get(account_id)
            if account is None:
                # Not a skip: the account may come back with the next reload; the
                # retry/dead-letter path keeps the job visible and redrivable.
                raise LookupError(f"IMAP account {account_id!r} is not configured")
            pool = self._pools[account_id] = _Pool(account, self.limiter)
        return pool

    # ------------------------------------------------------------------ fetch

    async def fetch(self, job: Job, max_size: int) -> FetchedMessage | SourceUnavailable:
        """The raw message *job* points at, or why it cannot be had.

        Raises :class:`~inboundd.outcomes.TransientError` (back off without
        burning an attempt) when the server cannot be reached, refuses the
        login or fails commands. A reused pooled connection that turns out
        dead is replaced and the job tried once more on a fresh one.
        Cancellation abandons the connection (it is closed, not pooled).
        """
        pointer = job.pointer
        assert isinstance(pointer, ImapPointer), f"not an IMAP pointer: {type(pointer).__name__}"
        started = trio.current_time()
        try:
            result = await self._on_connection(pointer.account, lambda conn: self._fetch_on(conn, pointer, max_size))
        except TransientError as exc:
            self._count(pointer.account, [exc], started)
            raise
        self._count(pointer.account, [result], started)
        return result

    async def fetch_many(self, jobs: Sequence[Job], max_size: int) -> list[FetchedMessage | SourceUnavailable | Exception]:
        """The messages *jobs* point at, one result per job in order: what :meth:`fetch` returns, or raises.

        One connection and two ``UID FETCH`` commands per (account, folder)
        for all its UIDs: the sizes first (an oversize message is never
        downloaded), then the bodies of the rest, in chunks of at most
        ``FETCH_MANY_BYTES``. A failure of a whole folder (server unreachable,
        login refused) is the exception of each of its jobs. Folders are
        fetched concurrently, each account within its ``fetch_connections``.
        """
        results: list[FetchedMessage | SourceUnavailable | Exception | None] = [None] * len(jobs)
        groups: dict[tuple[str, str], list[int]] = {}
        for index, job in enumerate(jobs):
            pointer = job.pointer
            assert isinstance(pointer, ImapPointer), f"not an IMAP pointer: {type(pointer).__name__}"
            groups.setdefault((pointer.account, pointer.folder), []).append(index)

        async def fetch_group(account: str, folder: str, indexes: list[int]) -> None:
            pointers = [jobs[i].pointer for i in indexes]
            started = trio.current_time()
            try:
                found = await self._on_connection(
                    account, lambda conn: self._fetch_many_on(conn, folder, pointers, max_size))  # type: ignore[arg-type]
            except (TransientError, FolderError, LookupError) as exc:
                found = [exc] * len(indexes)
            self._count(account, found, started)
            for index, result in zip(indexes, found):
                results[index] = result

        async with trio.open_nursery() as nursery:
            for (account, folder), indexes in groups.items():
                nursery.start_soon(fetch_group, account, folder, indexes)
        return results  # type: ignore[return-value]

    @staticmethod
    def _count(account: str, results: Sequence[Any], started: float) -> None:
        for result in results:
            if isinstance(result, FetchedMessage):
                outcome = "fetched"
            elif isinstance(result, SourceUnavailable):
                outcome = result.reason
            elif isinstance(result, TransientError):
                outcome = "unavailable"
            else:
                continue
            metrics.child(metrics.imap_fetches, account, outcome).inc()
        if any(isinstance(r, (FetchedMessage, SourceUnavailable)) for r in results):
            metrics.imap_fetch_seconds.observe(trio.current_time() - started)

    async def _on_connection(self, account: str, work: Callable[[Connection], Awaitable[T]]) -> T:
        """``await work(conn)`` on a pooled connection of *account*, with fetch's failure mapping.

        A dead reused connection is replaced once, by a newly opened one (the
        other pooled connections died with it when the server restarted); the server unreachable,
        the login refused or commands failing raise
        :class:`~inboundd.outcomes.TransientError`; a :class:`FolderError`
        (e.g. no permission) is raised as it is: a job error.
        """
        pool = self._pool(account)
        for attempt in (1, 2):
            fresh = True  # a failure to open a connection is never retried here
            try:
                async with pool.connection(reuse=attempt == 1) as (conn, fresh):
                    return await work(conn)
            except _STALE as exc:
                if fresh or attempt == 2:
                    raise TransientError(f"IMAP server of {account!r} unavailable: {describe(exc)}") from exc
                continue
            except (AuthError, ImapError) as exc:
                if isinstance(exc, FolderError):
                    raise  # e.g. no permission: a job error, visible in the DLQ if it persists
                # Login refused or the server failing commands: the mailbox is still there,
                # so back off without burning the job's attempts.
                raise TransientError(f"IMAP {account!r}: {describe(exc)}",
                                     retry_after=AUTH_RETRY_AFTER if isinstance(exc, AuthError) else None) from exc
        raise AssertionError("unreachable")

    async def _fetch_on(self, conn: Connection, pointer: ImapPointer, max_size: int) -> FetchedMessage | SourceUnavailable:
        return (await self._fetch_many_on(conn, pointer.folder, [pointer], max_size))[0]

    async def _fetch_many_on(self, conn: Connection, folder: str, pointers: Sequence[ImapPointer],
                             max_size: int) -> list[FetchedMessage | SourceUnavailable]:
        """Fetch *pointers* (all in *folder*) on *conn*: EXAMINE, sizes, then the bodies of those to download."""
        try:
            selected = await conn.select(folder, readonly=True)
        except FolderError as exc:
            if _folder_missing(str(exc)):
                return [SourceUnavailable("source_deleted", f"folder {folder!r} no longer exists")] * len(pointers)
            raise
        current = [p.uid for p in pointers if p.uidvalidity == selected.uidvalidity]
        sizes = await conn.call(_fetch_uids, conn, sorted(set(current)), [b"RFC822.SIZE"]) if current else {}
        skips: list[tuple[str, str] | None] = []
        wanted: list[int] = []
        for pointer in pointers:
            size = sizes.get(pointer.uid, {}).get(b"RFC822.SIZE") if pointer.uidvalidity == selected.uidvalidity \
                else None
            skip = proto.check_fetch(pointer.uidvalidity, selected.uidvalidity, size, max_size)
            skips.append(skip)
            if skip is None:
                wanted.append(pointer.uid)
        data: dict[int, dict[bytes, Any]] = {}
        for chunk in _chunks(sorted(set(wanted)), {uid: int(sizes[uid][b"RFC822.SIZE"]) for uid in wanted}):
            data.update(await conn.call(_fetch_uids, conn, chunk, _FETCH_ITEMS))
        results: list[FetchedMessage | SourceUnavailable] = []
        for pointer, skip in zip(pointers, skips):
            if skip is not None:
                results.append(SourceUnavailable(*skip))
                continue
            item = data.get(pointer.uid) or {}
            raw = item.get(b"BODY[]")
            if raw is None:
                results.append(SourceUnavailable("source_deleted", "message expunged while being fetched"))
                continue
            internal = item.get(b"INTERNALDATE")
            if isinstance(internal, datetime) and internal.tzinfo is None:
                internal = internal.replace(tzinfo=timezone.utc)
            results.append(FetchedMessage(
                raw=bytes(raw),
                provider_message_id=f"{pointer.uidvalidity}:{pointer.uid}",
                folder=folder,
                size=int(item.get(b"RFC822.SIZE") or len(raw)),
                internal_date=internal,
            ))
        return results

    # ------------------------------------------------------------------ post-actions

    async def after_commit(self, job: Job, outcome: Outcome) -> None:
        """Apply the account's ``post_action`` to the message *job* stored (*outcome* ``processed``).

        Called only after the message's transaction committed; any other
        outcome (a duplicate, a skip) touches nothing. Best effort by
        design: the message is safely stored, so a failure is logged and
        counted (``inboundd_imap_post_actions_total{outcome="error"}``), never
        raised into the consumer. Never touches a message whose folder
        changed UIDVALIDITY since the pointer was taken.
        """
        pointer = job.pointer
        if not isinstance(pointer, ImapPointer) or outcome.status != "processed":
            return
        account = self._accounts.get(pointer.account)
        if account is None:
            return
        action = proto.parse_post_action(account.config.post_action)
        if action.kind == "none":
            return
        outcome = "error"
        try:
            outcome = await self._post_action(pointer, action)
        except Exception as exc:  # noqa: BLE001 — the commit stands; report and move on
            log.event(_log, "imap.post_action.failed", level=logging.WARNING, account=pointer.account,
                      folder=pointer.folder, uid=pointer.uid, action=account.config.post_action,
                      error=f"{type(exc).__name__}: {exc}", job_id=job.id)
        else:
            log.event(_log, "imap.post_action", level=logging.DEBUG, account=pointer.account, folder=pointer.folder,
                      uid=pointer.uid, action=account.config.post_action, outcome=outcome, job_id=job.id)
        metrics.imap_post_actions.labels(pointer.account, action.kind, outcome).inc()

    async def _post_action(self, pointer: ImapPointer, action: proto.PostAction) -> str:
        pool = self._pool(pointer.account)
        for attempt in (1, 2):
            fresh = True
            try:
                async with pool.connection() as (conn, fresh):
                    return await self._post_action_on(conn, pointer, action)
            except _STALE:
                if fresh or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _post_action_on(self, conn: Connection, pointer: ImapPointer, action: proto.PostAction) -> str:
        try:
            selected = await conn.select(pointer.folder, readonly=False)
        except FolderError as exc:
            if _folder_missing(str(exc)):
                return "source_deleted"
            raise
        if selected.uidvalidity != pointer.uidvalidity:
            return "uidvalidity_changed"
        uid = pointer.uid
        client = conn.client
        if action.kind == "seen":
            await conn.call(client.add_flags, [uid], [b"\\Seen"], True)
            return "done"
        if action.kind == "move":
            return await self._move(conn, uid, action.folder)
        if action.kind == "delete":
            await conn.call(client.add_flags, [uid], [b"\\Deleted"], True)
            return await self._expunge(conn, uid)
        return "none"

    async def _move(self, conn: Connection, uid: int, target: str) -> str:
        client = conn.client

        def move() -> None:
            try:
                if conn.has_move:
                    client.move([uid], target)
                else:
                    client.copy([uid], target)
            except imaplib.IMAP4.abort:
                raise
            except imaplib.IMAP4.error as exc:
                if "TRYCREATE" not in str(exc).upper():
                    raise
                # The target folder does not exist yet: create it once, then retry.
                client.create_folder(target)
                if conn.has_move:
                    client.move([uid], target)
                else:
                    client.copy([uid], target)

        await conn.call(move)
        if conn.has_move:
            return "done"
        await conn.call(client.add_flags, [uid], [b"\\Deleted"], True)
        return await self._expunge(conn, uid)

    async def _expunge(self, conn: Connection, uid: int) -> str:
        if not conn.has_uidplus:
            # A plain EXPUNGE would also remove other messages someone flagged
            # \Deleted: leave ours flagged for the next expunge by its owner.
            return "flagged_deleted"
        await conn.call(conn.client.uid_expunge, [uid])
        return "done"


def _chunks(uids: list[int], sizes: dict[int, int]) -> list[list[int]]:
    """*uids* in order, cut so that each chunk's messages add up to at most ``FETCH_MANY_BYTES`` (≥ 1 UID each)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    total = 0
    for uid in uids:
        if current and total + sizes[uid] > FETCH_MANY_BYTES:
            chunks.append(current)
            current, total = [], 0
        current.append(uid)
        total += sizes[uid]
    if current:
        chunks.append(current)
    return chunks


def _fetch_uids(conn: Connection, uids: Sequence[int], items: list[bytes]) -> dict[int, dict[bytes, Any]]:
    """``UID FETCH <uids> items`` → each existing UID's data (a UID that does not exist is absent).

    imapclient's ``fetch`` keys answers by UID but unsolicited FETCH responses
    (another client changed flags) by sequence number, so the two can
    collide; parse with explicit UIDs and keep only the UIDs asked for.
    """
    client = conn.client
    imap = client._imap
    wanted = set(uids)
    try:
        tag = imap._command("UID", "FETCH", proto.uid_set(sorted(wanted)), seq_to_parenstr_upper(items))
        typ, data = imap._command_complete("FETCH", tag)
        if typ != "OK":
            raise ImapError(f"UID FETCH {proto.uid_set(sorted(wanted))} failed: {typ} {data[0]!r}")
        typ, data = imap._untagged_response(typ, data, "FETCH")
        parsed = parse_fetch_response(data, client.normalise_times, uid_is_key=False) if data != [None] else {}
    finally:
        imap.untagged_responses.clear()
    merged: dict[int, dict[bytes, Any]] = {}
    for item in parsed.values():
        uid = item.get(b"UID")
        if uid in wanted:
            merged.setdefault(uid, {}).update(item)
    return merged


def _folder_missing(message: str) -> bool:
    upper = message.upper()
    return "NONEXISTENT" in upper or "DOESN'T EXIST" in upper or "DOES NOT EXIST" in upper

