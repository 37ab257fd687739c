"""The one Redis pool, used from trio.

``redis.asyncio`` does not run under trio, so every Redis call but one is
redis-py's sync client run in a worker thread (``trio.to_thread.run_sync``) bounded by a
``CapacityLimiter`` that is smaller than the connection pool: a thread never
waits for a connection while holding a limiter slot.

Usage: ``await rio.run(fn, *args)`` runs ``fn(client, *args)`` in a thread and
returns its result. Batch work inside ``fn`` (pipelines, scripts): a thread
hop costs ~0.15 ms. The exception is the enqueue batcher's script call, the
webhooks' hot path: ``await rio.call_direct(*command)`` sends it on
:class:`DirectConnection`, one connection spoken from the trio thread.

Every call reports to ``rio.outage`` whether Redis answered, so an outage is
logged once by its changes of state (``redis.down``, ``redis.still_down``
every minute, ``redis.up``) however many tasks find it down; the tasks
themselves log their failures at debug level (:func:`failure_level`).

Cancellation: a call's caller waits for it to end, at most
``redis.socket_timeout`` (a cancelled ``XREADGROUP`` must hand over what it
read, and an enqueue must know whether it landed). Calls whose late
completion is harmless (a PING, a lease's compare-and-set) pass
``abandon_on_cancel=True`` and release their caller at once. The
configuration keeps ``socket_timeout`` at most a third of the shortest
single-owner lease (``config_schema.CoreConfig.check``).
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, NoReturn, TypeVar

import redis
import trio
from redis._parsers.base import BaseParser  # redis-py's error-reply classes; the lock pins redis

from . import log
from .config_schema import RedisConfig
from .outage import Outage

__all__ = ["DirectConnection", "RedisIO", "failure_level", "parse_reply", "tagged_key", "unreachable"]

_log = log.get_logger("redis")

T = TypeVar("T")


def tagged_key(prefix: str, *parts: str) -> str:
    """The one builder of inboundd's Redis keys: ``{prefix}:part:part…``.

    Every key of a prefix carries the same hash tag, so all of them live in
    one Redis Cluster slot and any script may touch several at once.
    """
    return ":".join(("{" + prefix + "}", *parts))


class RedisIO:
    """A redis-py client with its connection pool and the thread limiter that guards it."""

    def __init__(self, client: redis.Redis, threads: int, *, socket_timeout: float | None = None) -> None:
        self.client = client
        self.limiter = trio.CapacityLimiter(threads)
        #: Whether Redis answers, as the calls found it (logs the outage's changes of state).
        self.outage = Outage("redis", _log, now=trio.current_time)
        #: How long one call may wait for Redis (None: unbounded); a blocking read must stay well below it.
        self.socket_timeout = socket_timeout
        #: The connection the enqueue batcher writes on without a thread (None: TLS, use :meth:`run`).
        self.direct = DirectConnection.for_pool(client.connection_pool, socket_timeout)

    @classmethod
    def from_config(cls, cfg: RedisConfig, password: str | None = None) -> "RedisIO":
        """Build the shared pool from ``[redis]``; connects lazily (nothing is sent yet)."""
        pool = redis.ConnectionPool.from_url(
            cfg.url,
            max_connections=cfg.pool_size,
            socket_timeout=cfg.socket_timeout,
            socket_connect_timeout=cfg.socket_timeout,
            health_check_interval=30,
            **({"password": password} if password else {}),
        )
        # Leave connections spare for threads that are finishing while new ones start.
        threads = max(2, cfg.pool_size - 4)
        return cls(redis.Redis(connection_pool=pool), threads, socket_timeout=cfg.socket_timeout)

    async def run(self, fn: Callable[..., T], *args: Any, abandon_on_cancel: bool = False) -> T:
        """Run ``fn(client, *args)`` in a worker thread and return its result.

        Cancellation waits for the call to finish (Redis calls are bounded by
        ``socket_timeout``), so no thread is left holding a half-read reply —
        unless *abandon_on_cancel*: then the caller is released at once and the
        thread ends on its own within ``socket_timeout``, its result dropped.
        Use that only for calls whose late completion does no harm.
        """
        return await self._reported(trio.to_thread.run_sync(fn, self.client, *args, limiter=self.limiter,
                                                            abandon_on_cancel=abandon_on_cancel))

    async def call_direct(self, *args: bytes | str) -> Any:
        """Send one command on :attr:`direct` from the trio thread; reports to ``outage`` as :meth:`run` does.

        Cancellation: as :meth:`DirectConnection.call` (a sent command is always read to its reply).
        """
        assert self.direct is not None, "no direct connection for this Redis (TLS): use run()"
        return await self._reported(self.direct.call(*args))

    async def _reported(self, call: Awaitable[T]) -> T:
        """Await *call*, telling ``outage`` whether Redis answered."""
        try:
            result = await call
        except Exception as exc:
            if unreachable(exc):
                self.outage.failed(exc)
            raise
        self.outage.succeeded()
        return result

    async def ping(self) -> None:
        """Raise unless Redis answers PING. A cancelled ping returns at once (``/readyz`` keeps its budget)."""
        await self.run(lambda client: client.ping(), abandon_on_cancel=True)

    async def close(self) -> None:
        """Close every pooled connection, and the direct one."""
        if self.direct is not None:
            await self.direct.aclose()
        await trio.to_thread.run_sync(self.client.connection_pool.disconnect)


def unreachable(exc: BaseException) -> bool:
    """Whether *exc* means Redis cannot be reached or used (refused, timed out, authentication, loading)."""
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError))


def failure_level(exc: BaseException) -> int:
    """The level a task logs a failed Redis call at: debug when it is the outage ``RedisIO`` already logs."""
    return logging.DEBUG if unreachable(exc) else logging.WARNING


class DirectConnection:
    """One Redis connection spoken from the trio thread itself, for the enqueue batcher's script call.

    A ``RedisIO.run`` costs a thread hop — a thread-cache hand-over, a GIL
    hand-over and a wake-up of the event loop — which under webhook load
    cost more CPU than the Redis command it carried. This connection sends
    RESP2 (arrays of bulk strings) and reads the replies it needs (simple
    strings, errors, integers, bulk strings, arrays) on a trio stream.

    Plain TCP and unix sockets only: :meth:`for_pool` returns None for TLS
    (``rediss://``) or a credential provider, and the caller keeps the thread
    path. Errors are redis-py's (``ConnectionError``, ``TimeoutError``,
    ``ResponseError``), so callers and :func:`unreachable` treat both paths
    alike; after any error the connection is closed and the next call
    reconnects (with AUTH and SELECT as configured).
    """

    def __init__(self, *, host: str | None, port: int, path: str | None, db: int, username: str | None,
                 password: str | None, timeout: float | None) -> None:
        self._address = (host, port, path)
        self._hello = ([b"AUTH", *([username.encode()] if username else []), password.encode()] if password else None,
                       [b"SELECT", str(db).encode()] if db else None)
        self.timeout = timeout if timeout is not None else float("inf")
        self._stream: trio.abc.Stream | None = None
        self._buffer = bytearray()
        self.lock = trio.StrictFIFOLock()

    @classmethod
    def for_pool(cls, pool: redis.ConnectionPool, timeout: float | None) -> "DirectConnection | None":
        """A connection to where *pool* connects, or None when this class cannot speak to it."""
        kwargs = pool.connection_kwargs
        if kwargs.get("credential_provider") is not None:
            return None
        if pool.connection_class is redis.UnixDomainSocketConnection:
            host, port, path = None, 0, kwargs["path"]
        elif pool.connection_class is redis.Connection:
            host, port, path = kwargs.get("host", "localhost"), int(kwargs.get("port", 6379)), None
        else:  # TLS and anything else stay on redis-py's own connections
            return None
        return cls(host=host, port=port, path=path, db=int(kwargs.get("db") or 0), username=kwargs.get("username"),
                   password=kwargs.get("password"), timeout=timeout)

    async def call(self, *args: bytes | str) -> Any:
        """Send one command and return its reply; raises redis-py's errors (a ``-ERR`` reply: ``ResponseError``).

        Cancellation before the command is sent raises ``Cancelled`` with
        nothing sent; once it is sent, the reply is awaited (at most the
        timeout) under a shield, so a sent command is never left unread.
        """
        async with self.lock:
            stream = await self._connected()
            try:
                with trio.CancelScope(shield=True), trio.fail_after(self.timeout):
                    await stream.send_all(_command(args))
                    reply = await self._reply()
            except BaseException as exc:
                await self.aclose()
                _raise_translated(exc)
        if isinstance(reply, redis.RedisError):
            raise reply
        return reply

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        self._buffer.clear()
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _connected(self) -> trio.abc.Stream:
        if self._stream is not None:
            return self._stream
        host, port, path = self._address
        try:
            with trio.fail_after(self.timeout):
                stream = await (trio.open_unix_socket(path) if path else trio.open_tcp_stream(host, port))
                self._stream = stream
                for hello in self._hello:
                    if hello is not None:
                        await stream.send_all(_command(hello))
                        if isinstance(reply := await self._reply(), redis.RedisError):
                            raise redis.AuthenticationError(str(reply)) if hello[0] == b"AUTH" else reply
        except BaseException as exc:
            await self.aclose()
            _raise_translated(exc)
        return stream

    async def _reply(self) -> Any:
        while True:
            parsed = parse_reply(self._buffer)
            if parsed is not None:
                reply, used = parsed
                del self._buffer[:used]
                return reply
            await self._fill()

    async def _fill(self) -> None:
        assert self._stream is not None
        chunk = await self._stream.receive_some(65536)
        if not chunk:
            raise redis.ConnectionError("Redis closed the connection")
        self._buffer += chunk


def parse_reply(data: bytes | bytearray, pos: int = 0) -> tuple[Any, int] | None:
    """The RESP2 reply starting at *pos* of *data* and the offset just past it, or None if *data* ends first.

    Simple strings and bulk strings are bytes, a nil is None, an error
    reply is the exception redis-py would raise for it, as a value
    (returned, not raised: it may sit inside an array). A type byte RESP2 does not have raises
    ``redis.ConnectionError``: the stream is out of step. Pure.
    """
    start, end = pos, data.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, rest = data[pos:pos + 1], data[pos + 1:end]
    pos = end + 2
    if kind == b"+":
        return bytes(rest), pos
    if kind == b"-":
        # redis-py's own classification of error replies (LOADING → BusyLoadingError, a ConnectionError,
        # so a loading Redis counts as an outage on this path too; NOSCRIPT → NoScriptError; …).
        return BaseParser.parse_error(bytes(rest).decode("utf-8", "replace")), pos
    if kind == b":":
        return int(rest), pos
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None, pos
        if len(data) < pos + size + 2:
            return None
        return bytes(data[pos:pos + size]), pos + size + 2
    if kind == b"*":
        count = int(rest)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            parsed = parse_reply(data, pos)
            if parsed is None:
                return None
            item, pos = parsed
            items.append(item)
        return items, pos
    raise redis.ConnectionError(f"unexpected reply from Redis: {bytes(data[start:start + 40])!r}")


def _command(args: Any) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _raise_translated(exc: BaseException) -> NoReturn:
    """Raise *exc* as the redis-py error it means (a timeout, a broken or refused connection), else as is."""
    if isinstance(exc, trio.TooSlowError):
        raise redis.TimeoutError("Redis did not answer within the socket timeout") from exc
    if isinstance(exc, (OSError, trio.BrokenResourceError, trio.ClosedResourceError)):
        raise redis.ConnectionError(f"Redis connection: {type(exc).__name__}: {exc}") from exc
    raise exc
