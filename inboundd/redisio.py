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

    def __init__(self, client: redis.Redis, threads: int) -> None:
        self.client = client
        self.limiter = trio.CapacityLimiter(threads)
        #: Whether Redis answers, as the calls found it (logs the outage's changes of state).
        self.outage = Outage("redis", _log, now=trio.current_time)

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
        return cls(redis.Redis(connection_pool=pool), threads)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(client, *args)`` in a worker thread and return its result.

        Cancellation waits for the call to finish (Redis calls are bounded by
        ``socket_timeout``), so no thread is left holding a half-read reply.
        """
        try:
            result = await trio.to_thread.run_sync(fn, self.client, *args, limiter=self.limiter)
        except Exception as exc:
            if unreachable(exc):
                self.outage.failed(exc)
            raise
        self.outage.succeeded()
        return result

    async def ping(self) -> None:
        """Raise unless Redis answers PING."""
        await self.run(lambda client: client.ping())

    async def close(self) -> None:
        """Close every pooled connection."""
        await trio.to_thread.run_sync(self.client.connection_pool.disconnect)


def unreachable(exc: BaseException) -> bool:
    """Whether *exc* means Redis cannot be reached or used (refused, timed out, authentication, loading)."""
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError))


def failure_level(exc: BaseException) -> int:
    """The level a task logs a failed Redis call at: debug when it is the outage ``RedisIO`` already logs."""
    return logging.DEBUG if unreachable(exc) else logging.WARNING
