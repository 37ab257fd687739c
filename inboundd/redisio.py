"""The one Redis pool, used from trio.

``redis.asyncio`` does not run under trio, so every Redis call is redis-py's
sync client run in a worker thread (``trio.to_thread.run_sync``) bounded by a
``CapacityLimiter`` that is smaller than the connection pool: a thread never
waits for a connection while holding a limiter slot.

Usage: ``await rio.run(fn, *args)`` runs ``fn(client, *args)`` in a thread and
returns its result. Batch work inside ``fn`` (pipelines, scripts): a thread
hop costs ~0.15 ms.

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
from typing import Any, Callable, TypeVar

import redis
import trio

from . import log
from .config_schema import RedisConfig
from .outage import Outage

__all__ = ["RedisIO", "failure_level", "tagged_key", "unreachable"]

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
        try:
            result = await trio.to_thread.run_sync(fn, self.client, *args, limiter=self.limiter,
                                                   abandon_on_cancel=abandon_on_cancel)
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
        """Close every pooled connection."""
        await trio.to_thread.run_sync(self.client.connection_pool.disconnect)


def unreachable(exc: BaseException) -> bool:
    """Whether *exc* means Redis cannot be reached or used (refused, timed out, authentication, loading)."""
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError))


def failure_level(exc: BaseException) -> int:
    """The level a task logs a failed Redis call at: debug when it is the outage ``RedisIO`` already logs."""
    return logging.DEBUG if unreachable(exc) else logging.WARNING
