"""The one PostgreSQL pool, used from trio.

psycopg's async API needs asyncio, so the daemon uses the sync
``ConnectionPool`` through worker threads. ``await db.run(fn, *args)`` runs
``fn(conn, *args)`` in a thread on a pooled connection; the pool's connection
context commits when ``fn`` returns and rolls back when it raises.

Cancellation: the waiting task is released at once; the running statement is
cancelled server-side (``cancel_safe``, shielded, bounded), so the thread ends
quickly and its connection goes back to the pool healthy.

While PostgreSQL cannot be reached, the pool's workers retry connecting in
the background and psycopg-pool logs every failed attempt (several lines
a second, libpq's message split over two). Those lines are taken out of its
log and reported to ``db.outage`` instead, which logs the outage by its
changes of state with the real error (``postgres.down``,
``postgres.still_down`` every minute with the count, ``postgres.up`` when a
connection is made again); ``outage.last_error`` is what the daemon shows
while it waits for PostgreSQL at start.

A call cancelled while its thread still waits for a pooled connection
never runs: the thread hands the connection back as soon as it gets one;
one given up while its function runs (slow Python, not a statement the
server can cancel) rolls back instead of committing when it ends.

Bounds: ``run(..., timeout=T)`` sets ``statement_timeout`` to *T* and
``lock_timeout`` to 0.8 *T* for its transaction (``SET LOCAL``), and stops
waiting after *T* plus a margin even when the server does not answer at all
(a frozen network path), raising :class:`DatabaseTimeout`. The thread of such
a call, and an idle ``LISTEN`` connection, are freed by TCP itself: every
connection asks for keepalives and a ``tcp_user_timeout``
(:data:`TCP_DEFAULTS`, unless the DSN sets its own), so a server that
vanished (a host gone, a failover to another address) is noticed within
about half a minute, not after the kernel's ~15 minutes of retransmissions.
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any, Callable, TypeVar

import msgspec
import psycopg
import trio
from psycopg.types.json import set_json_dumps
from psycopg_pool import ConnectionPool

from .. import log
from ..config_schema import PostgresConfig
from ..outage import Outage

__all__ = ["Database", "DatabaseTimeout"]

T = TypeVar("T")

_log = log.get_logger("store")

#: How long a cancelled statement's server-side cancel may take.
CANCEL_TIMEOUT = 2.0
#: Beyond a call's *timeout*, how long the trio side still waits for the server's own timeout to answer.
TIMEOUT_MARGIN = 1.0
#: How long the pool keeps retrying one failed background connection attempt before giving it up
#: (psycopg's default is 5 minutes, with a backoff that doubles up to there: after an outage the pool
#: would connect again only at its next scheduled attempt, seconds to minutes after the server is back).
#: A new attempt starts whenever a connection is requested.
RECONNECT_TIMEOUT = 3.0
#: A lock wait ends at this fraction of the call's timeout: before the statement timeout, so a row held by
#: someone else reads as "lock not available" (SQLSTATE 55P03, worth a retry), not as a statement that
#: ran too long (57014).
LOCK_FRACTION = 0.8

# jsonb columns are written with msgspec (fast, and it knows datetimes).
set_json_dumps(lambda obj: msgspec.json.encode(obj).decode())

#: psycopg-pool's logger, and its messages about background connection attempts.
POOL_LOGGER = "psycopg.pool"
_CONNECT_FAILED = "error connecting in %r: %s"
_GAVE_UP = "reconnection attempt in pool %r failed after %s sec"

_pool_numbers = itertools.count(1)

#: libpq's TCP settings for every connection, where the DSN does not set its own: a peer that stops
#: acknowledging is dropped after ~25 s of silence (keepalive probes at 10 s, then 3 every 5 s) or
#: 30 s of unacknowledged writes, so a dead path frees its pool slot and wakes a ``LISTEN``.
#: A healthy server's kernel answers the probes while a long statement runs: they never cut one short.
TCP_DEFAULTS: dict[str, str] = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}


def connection_options(dsn: str, connect_timeout: float, password: str | None) -> dict[str, Any]:
    """The libpq options the daemon adds to *dsn*: the DSN's own values win over :data:`TCP_DEFAULTS`."""
    given = psycopg.conninfo.conninfo_to_dict(dsn)
    options: dict[str, Any] = {key: value for key, value in TCP_DEFAULTS.items() if key not in given}
    options.update(connect_timeout=max(1, int(connect_timeout)), application_name="inboundd")
    if password:
        options["password"] = password
    return options


class _PoolLog(logging.Filter):
    """Takes one pool's connection-attempt lines out of psycopg-pool's log and reports them to an outage."""

    def __init__(self, pool_name: str, outage: Outage) -> None:
        super().__init__()
        self.pool_name = pool_name
        self.outage = outage

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if not args or args[0] != self.pool_name:
            return True
        if record.msg == _CONNECT_FAILED and len(args) == 2:
            self.outage.failed(args[1] if isinstance(args[1], BaseException) else str(args[1]))
            return False
        return record.msg != _GAVE_UP  # the pool tries again on the next request: nothing to tell


class DatabaseTimeout(psycopg.OperationalError):
    """PostgreSQL did not answer a call within its timeout (the server or the path to it hangs)."""


class _Abandoned(Exception):
    """Raised in a worker thread whose caller gave up before the thread got its connection."""


class _Call:
    """The hand-over between a trio task and the worker thread running its call."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.abandoned = False
        self.conn: psycopg.Connection[Any] | None = None


class Database:
    """The shared PostgreSQL pool and its thread limiter."""

    def __init__(self, cfg: PostgresConfig, password: str | None = None) -> None:
        self.cfg = cfg
        kwargs = connection_options(cfg.dsn, cfg.connect_timeout, password)
        #: Whether PostgreSQL can be connected to, as the pool found it (logs the outage's changes of state).
        self.outage = Outage("postgres", _log)
        self._connect_kwargs = kwargs
        self.pool = ConnectionPool(
            cfg.dsn, min_size=cfg.pool_min, max_size=cfg.pool_max, kwargs=kwargs,
            timeout=cfg.connect_timeout, open=False, name=f"inboundd-{next(_pool_numbers)}",
            configure=lambda conn: self.outage.succeeded(),
            reconnect_timeout=max(RECONNECT_TIMEOUT, cfg.connect_timeout),
        )
        self._pool_log = _PoolLog(self.pool.name, self.outage)
        # One thread per pooled connection: a thread never waits for a connection
        # while other tasks could have used its slot.
        self.limiter = trio.CapacityLimiter(cfg.pool_max)

    async def open(self) -> None:
        """Start the pool; connections are made in the background (never blocks on an absent server)."""
        logging.getLogger(POOL_LOGGER).addFilter(self._pool_log)
        await trio.to_thread.run_sync(lambda: self.pool.open(wait=False))

    async def close(self) -> None:
        """Close the pool and every connection (an unclosed pool stalls exit)."""
        try:
            await trio.to_thread.run_sync(lambda: self.pool.close(timeout=CANCEL_TIMEOUT))
        finally:
            logging.getLogger(POOL_LOGGER).removeFilter(self._pool_log)

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float | None = None,
                  cancel_wait: float = CANCEL_TIMEOUT) -> T:
        """Run ``fn(conn, *args)`` in a transaction on a pooled connection; return its result.

        *timeout* (seconds) bounds every statement and lock wait of the
        transaction on the server, and the whole call here: after *timeout*
        plus a margin the call is cancelled and :class:`DatabaseTimeout` raised.
        Waiting for a pooled connection is bounded by ``postgres.connect_timeout``
        (``psycopg_pool.PoolTimeout``).

        Cancelled while a statement runs, the call asks the server to cancel
        it and waits up to *cancel_wait* seconds for that (shielded: the
        cancellation waits too); with 0 it returns at once. Either way the
        transaction is rolled back, never committed, and its connection goes
        back to the pool once the server answers.
        """
        if timeout is None:
            return await self._run(fn, args, None, cancel_wait)
        with trio.move_on_after(timeout + TIMEOUT_MARGIN) as scope:
            return await self._run(fn, args, timeout, cancel_wait)
        assert scope.cancelled_caught
        raise DatabaseTimeout(f"PostgreSQL did not answer within {timeout + TIMEOUT_MARGIN:g}s")

    async def _run(self, fn: Callable[..., T], args: tuple[Any, ...], timeout: float | None,
                   cancel_wait: float) -> T:
        call = _Call()

        def work() -> T:
            with self.pool.connection() as conn:
                with call.lock:
                    if call.abandoned:
                        raise _Abandoned()  # rolls back the empty transaction, returns the connection
                    call.conn = conn
                try:
                    if timeout is not None:
                        limit(conn, timeout)
                    result = fn(conn, *args)
                finally:
                    with call.lock:
                        call.conn = None
                        abandoned = call.abandoned
                if abandoned:
                    raise _Abandoned()  # the caller gave up: roll back rather than commit behind its back
                return result

        try:
            return await trio.to_thread.run_sync(work, limiter=self.limiter, abandon_on_cancel=True)
        except trio.Cancelled:
            with call.lock:
                call.abandoned = True
                conn = call.conn
            if conn is not None and cancel_wait > 0:
                with trio.move_on_after(cancel_wait) as scope:
                    scope.shield = True
                    try:
                        await trio.to_thread.run_sync(
                            lambda: conn.cancel_safe(timeout=cancel_wait), abandon_on_cancel=True)
                    except Exception as exc:  # the statement then ends by itself
                        log.event(_log, "postgres.cancel_failed", level=logging.WARNING, error=str(exc))
            raise

    def connect(self, **options: Any) -> psycopg.Connection[Any]:
        """A new connection outside the pool, for a ``LISTEN`` (blocking: call it in a thread); the caller closes it."""
        return psycopg.connect(self.cfg.dsn, **self._connect_kwargs, **options)

    async def ping(self, timeout: float | None = None, *, cancel_wait: float = CANCEL_TIMEOUT) -> None:
        """Raise unless PostgreSQL answers ``SELECT 1`` (within *timeout* seconds, if given).

        *cancel_wait*: as for :meth:`run` (0: a cancelled ping returns at once).
        """
        await self.run(lambda conn: conn.execute("SELECT 1").fetchone(), timeout=timeout, cancel_wait=cancel_wait)

    async def check(self, timeout: float) -> None:
        """Discard pooled connections that no longer work (the server restarted), then :meth:`ping`.

        Used to decide that PostgreSQL is back after an outage: the next
        calls then get working connections, not the dead ones of before.
        """
        with trio.move_on_after(timeout):
            await trio.to_thread.run_sync(self.pool.check, abandon_on_cancel=True)
        await self.ping(timeout)


def limit(conn: Any, seconds: float) -> None:
    """Bound every statement and lock wait of *conn*'s current transaction to *seconds* (``SET LOCAL``)."""
    conn.execute("SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)",
                 (f"{max(1, int(seconds * 1000))}ms", f"{max(1, int(seconds * LOCK_FRACTION * 1000))}ms"))
