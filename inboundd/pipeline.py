"""The daemon's work, wired: shared pools, queue, consumers, reclaim timer, IMAP listeners.

:class:`Pipeline` owns the one Redis pool and the one PostgreSQL pool for the
daemon's lifetime (``async with Pipeline.open(daemon)``), starts every worker
task in the nursery the daemon gives it, and is the daemon's single handle on
intake (stop/resume), idleness (for drain and shutdown), live reconfiguration
and status.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import msgspec
import trio

from . import config as config_mod, log
from .backoff import Backoff
from .consumer import ConsumerPool
from .processing import Processor
from .source import SourceRegistry
from .providers.imap_conn import accounts_from_config
from .providers.imap_fetch import ImapFetcher
from .ingress.cursors import DbCursorStore
from .providers.imap_listener import ImapListenerGroup
from .queue import Queue, ReclaimTimer
from .redisio import RedisIO
from .store.db import Database
from .store.migrate import SchemaTooNew, migrate

__all__ = ["Pipeline"]

_log = log.get_logger("pipeline")

#: Start-up waits for PostgreSQL (migrations) with this backoff (doubling, no jitter), bounded.
STARTUP_RETRY_BASE, STARTUP_RETRY_CAP = 0.5, 10.0


def _secret(cfg: config_mod.Config, key: str) -> str | None:
    secret = cfg.secret(key)
    return secret.reveal() if secret is not None else None


class Pipeline:
    """Everything the daemon runs besides its HTTP servers."""

    def __init__(self, cfg: config_mod.Config, rio: RedisIO, db: Database) -> None:
        self.cfg = cfg
        self.rio = rio
        self.db = db
        instance = cfg.daemon.instance_id
        accounts = accounts_from_config(cfg)
        self.queue = Queue(rio, cfg.queue, prefix=cfg.redis.key_prefix)
        self.sources = SourceRegistry()
        self.imap_fetcher = ImapFetcher(accounts)
        self.sources.register("imap", self.imap_fetcher)
        self.processor = Processor(db, self.sources, cfg, instance)
        self.consumers = ConsumerPool(self.queue, self.processor, cfg.queue, instance, count=cfg.daemon.consumers)
        self.reclaim = ReclaimTimer(self.queue, cfg.queue, consumer=f"{instance}-reclaim")
        self.listeners = ImapListenerGroup(
            accounts, queue=self.queue, cursors=DbCursorStore(db), rio=rio, key_prefix=cfg.redis.key_prefix,
            instance_id=instance,
        )
        self._nursery: trio.Nursery | None = None
        self._listeners_drained = trio.Event()
        self._listeners_drained.set()  # nothing to drain before stop_intake()

    @classmethod
    @asynccontextmanager
    async def open(cls, daemon: Any) -> AsyncIterator["Pipeline"]:
        """Open the pools, apply migrations (waiting for PostgreSQL), yield, close the pools.

        The pools are closed on every exit path, cancellation included.
        """
        cfg = daemon.cfg
        rio = RedisIO.from_config(cfg.redis, _secret(cfg, "redis.password"))
        try:
            db = Database(cfg.postgres, _secret(cfg, "postgres.password"))
            try:
                await db.open()
                await cls._migrate_when_reachable(daemon, db)
                pipeline = cls(cfg, rio, db)
                try:
                    yield pipeline
                finally:
                    with trio.CancelScope(shield=True):
                        await pipeline.imap_fetcher.aclose()
            finally:
                with trio.CancelScope(shield=True):
                    await db.close()
        finally:
            with trio.CancelScope(shield=True):
                await rio.close()

    @staticmethod
    async def _migrate_when_reachable(daemon: Any, db: Database) -> None:
        retry = Backoff(STARTUP_RETRY_BASE, STARTUP_RETRY_CAP, jitter="none")
        while True:
            try:
                applied = await db.run(migrate)
            except SchemaTooNew:
                raise
            except Exception as exc:  # PostgreSQL not up yet: wait rather than crash-loop
                delay = retry.failed()
                log.event(_log, "postgres.unavailable", level=logging.WARNING, error=str(exc), retry_in=delay)
                daemon.notifier.status(f"waiting for PostgreSQL: {exc}")
                await trio.sleep(delay)
                continue
            if applied:
                log.event(_log, "migrations.applied", versions=",".join(str(v) for v in applied))
            return

    async def start(self, nursery: trio.Nursery) -> None:
        """Start every worker task in *nursery*; returns once each reported started."""
        self._nursery = nursery
        await self._warn_if_redis_forgets()
        await nursery.start(self.queue.run)
        await nursery.start(self.reclaim.run)
        await nursery.start(self.consumers.run)
        await nursery.start(self.listeners.run)

    async def _warn_if_redis_forgets(self) -> None:
        """Log loudly when Redis keeps no append-only file: an accepted job would not survive its restart."""
        try:
            settings = await self.rio.run(lambda client: client.config_get("appendonly"))
        except Exception as exc:  # CONFIG may be disabled (managed Redis): nothing to tell
            log.event(_log, "redis.durability_unknown", level=logging.DEBUG, error=str(exc))
            return
        if settings.get("appendonly") != "yes":
            log.event(_log, "redis.not_durable", level=logging.WARNING, appendonly=settings.get("appendonly"),
                      note="jobs accepted since the last snapshot are lost if Redis restarts; "
                           "set appendonly yes (appendfsync everysec or always)")

    # ------------------------------------------------------------------ intake

    def stop_intake(self) -> None:
        """Consumers stop claiming, listeners log out (in the background); in-flight jobs go on."""
        self.consumers.drain()
        self._listeners_drained = trio.Event()
        self._worker_nursery().start_soon(self._drain_listeners, self._listeners_drained)

    async def _drain_listeners(self, done: trio.Event) -> None:
        try:
            await self.listeners.drain()
        finally:
            done.set()

    def resume_intake(self) -> None:
        self.consumers.resume()
        self._worker_nursery().start_soon(self.listeners.resume)

    async def wait_idle(self) -> None:
        """Return once no job is in flight and every listener has logged out."""
        await self.consumers.wait_drained()
        await self._listeners_drained.wait()

    def _worker_nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "Pipeline.start() has not run"
        return self._nursery

    # ------------------------------------------------------------------ reload

    async def apply_config(self, new: config_mod.Config) -> None:
        """Apply what can change live: consumer count and IMAP accounts."""
        if new.daemon.consumers != self.consumers.count:
            log.event(_log, "consumers.resize", before=self.consumers.count, after=new.daemon.consumers)
            self.consumers.resize(new.daemon.consumers)
        accounts = accounts_from_config(new)
        self.imap_fetcher.update(accounts)
        await self.listeners.update(accounts)
        self.listeners.kick()  # an auth_failed listener retries at once after a reload

    # ------------------------------------------------------------------ reporting

    def summary(self) -> str:
        states = self.listeners.summary()
        listeners = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "none"
        return f"{self.consumers.count} consumers; listeners: {listeners}"

    async def refresh_gauges(self) -> None:
        await self.queue.refresh_gauges()

    def webhook_handler(self, provider: str) -> Any:
        return None  # no webhook provider is implemented by this build

    async def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "consumers": {"count": self.consumers.count, "busy": self.consumers.busy},
            "listeners": [msgspec.to_builtins(listener) for listener in self.listeners.status()],
        }
        try:
            body["queue"] = msgspec.to_builtins(await self.queue.stats())
        except Exception as exc:  # status must answer while Redis is down, naming why
            body.setdefault("errors", {})["redis"] = f"{type(exc).__name__}: {exc}"
        return body
