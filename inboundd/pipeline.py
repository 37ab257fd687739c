"""The daemon's work, wired: shared pools, queue, consumers, reclaim timer, deliverer, every provider's runtime.

:class:`Pipeline` owns the one Redis pool and the one PostgreSQL pool for the
daemon's lifetime (``async with Pipeline.open(daemon)``), starts every worker
task in the nursery the daemon gives it, and is the daemon's single handle on
intake (stop/resume), idleness (for drain and shutdown), live reconfiguration,
provider routes, readiness and status. Providers come from the registry
(``inboundd.providers``): one runtime each, built here; none is named.
Deliveries to ``[[deliver]]`` targets are not a provider: the processor
routes each stored message to them (``deliver.targets.Router``) and the
deliverer (``deliver.deliverer``) sends what the outbox owes.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from collections.abc import Callable
from typing import Any, AsyncIterator

import msgspec
import redis
import trio

from . import config as config_mod, log
from .availability import Availability, Dependencies
from .backoff import Backoff
from .consumer import ConsumerPool
from .deliver.deliverer import Deliverer
from .deliver.targets import Router, Target, resolve as resolve_targets
from .ingress.cursors import DbCursorStore
from .ingress.webhook import Route, WebhookReply, WebhookRequest
from .outage import one_line
from .parsing import Parser, ProcessParser
from .processing import Processor, is_unreachable
from .provider import Context, ReadinessCheck, Runtime
from .providers import REGISTRY, Registry
from .queue import Queue, ReclaimTimer
from .redisio import RedisIO, unreachable as redis_unreachable
from .source import SourceRegistry
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

    def __init__(self, cfg: config_mod.Config, rio: RedisIO, db: Database, *, registry: Registry = REGISTRY,
                 parser: Parser | None = None, intake_open: Callable[[], bool] = lambda: True,
                 targets: list[Target] | None = None) -> None:
        self.cfg = cfg
        self.rio = rio
        self.db = db
        instance = cfg.daemon.instance_id
        self.queue = Queue(rio, cfg.queue, prefix=cfg.redis.key_prefix)
        #: Redis's and PostgreSQL's availability, shared by the consumers and the providers' ingress.
        self.dependencies = Dependencies()
        self.dependencies.add(Availability(rio.outage, rio.ping),
                              lambda exc: isinstance(exc, redis.RedisError) and redis_unreachable(exc))
        context = Context(cfg=cfg, queue=self.queue, rio=rio, db=db, cursors=DbCursorStore(db),
                          instance_id=instance, key_prefix=cfg.redis.key_prefix, intake_open=intake_open,
                          dependencies=self.dependencies)
        #: One runtime per registered provider, by provider name (registry order).
        self.runtimes: dict[str, Runtime] = {provider.name: provider.build(context) for provider in registry}
        self.sources = SourceRegistry()
        for name, runtime in self.runtimes.items():
            if runtime.source is not None:
                self.sources.register(name, runtime.source)
        targets = resolve_targets(cfg) if targets is None else targets
        self.router = Router(targets)
        self.processor = Processor(db, self.sources, cfg, instance, parser=parser, router=self.router)
        self.dependencies.add(self.processor.postgres, is_unreachable)   # one probe loop for jobs and ingress
        self.deliverer = Deliverer(db, targets, instance)
        self.consumers = ConsumerPool(self.queue, self.processor, cfg.queue, instance, count=cfg.daemon.consumers)
        self.reclaim = ReclaimTimer(self.queue, cfg.queue, consumer=f"{instance}-reclaim")
        self._nursery: trio.Nursery | None = None
        self._intake_stopped = trio.Event()
        self._intake_stopped.set()  # nothing to stop before stop_intake()

    @classmethod
    @asynccontextmanager
    async def open(cls, daemon: Any, *, registry: Registry = REGISTRY) -> AsyncIterator["Pipeline"]:
        """Open the pools, apply migrations (waiting for PostgreSQL), yield, close the pools.

        The pools (and every provider runtime's own, ``Runtime.aclose``, and
        the parse worker processes) are closed on every exit path,
        cancellation included.
        """
        cfg = daemon.cfg
        rio = RedisIO.from_config(cfg.redis, _secret(cfg, "redis.password"))
        try:
            db = Database(cfg.postgres, _secret(cfg, "postgres.password"))
            try:
                await db.open()
                daemon.attach_pools(rio, db)
                await cls._migrate_when_reachable(daemon, db)
                async with ProcessParser.open() as parser:
                    pipeline = cls(cfg, rio, db, registry=registry, parser=parser,
                                   intake_open=lambda: daemon.intake_open)
                    try:
                        yield pipeline
                    finally:
                        with trio.CancelScope(shield=True):
                            for runtime in pipeline.runtimes.values():
                                await runtime.aclose()
            finally:
                with trio.CancelScope(shield=True):
                    await db.close()
        finally:
            with trio.CancelScope(shield=True):
                await rio.close()

    @staticmethod
    async def _migrate_when_reachable(daemon: Any, db: Database) -> None:
        """Apply the migrations, waiting for PostgreSQL as long as it takes (saying so through *daemon*).

        While the pool cannot connect, the outage is logged by the pool
        (``postgres.down``, ``postgres.still_down``); what the daemon waits
        for names the pool's last error (refused, authentication, no such
        database), not the pool's timeout that ended the attempt.
        """
        retry = Backoff(STARTUP_RETRY_BASE, STARTUP_RETRY_CAP, jitter="none")
        while True:
            try:
                applied = await db.run(migrate)
            except SchemaTooNew:
                raise
            except Exception as exc:  # PostgreSQL not up yet: wait rather than crash-loop
                delay = retry.failed()
                error = db.outage.last_error if db.outage.down else one_line(exc)
                # The outage itself is logged once by the pool; anything else (a failing migration) here.
                log.event(_log, "postgres.unavailable", level=logging.DEBUG if db.outage.down else logging.WARNING,
                          error=error, retry_in=delay)
                daemon.starting(f"waiting for postgres (last error: {error})")
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
        # Before the consumers: what an earlier life of this daemon left claimed is taken back first.
        await nursery.start(self.processor.claims.run)
        await nursery.start(self.consumers.run)
        await nursery.start(self.deliverer.run)
        for runtime in self.runtimes.values():
            await nursery.start(runtime.run)

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
        """Consumers and the deliverer stop claiming, every provider stops intake (in the background).

        In-flight jobs and delivery requests go on."""
        self.consumers.drain()
        self.deliverer.drain()
        self._intake_stopped = trio.Event()
        self._worker_nursery().start_soon(self._stop_providers, self._intake_stopped)

    async def _stop_providers(self, done: trio.Event) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for runtime in self.runtimes.values():
                    nursery.start_soon(runtime.stop_intake)
        finally:
            done.set()

    def resume_intake(self) -> None:
        self.consumers.resume()
        self.deliverer.resume()
        for runtime in self.runtimes.values():
            self._worker_nursery().start_soon(runtime.resume_intake)

    async def wait_idle(self) -> None:
        """Return once no job nor delivery is in flight and every provider stopped its intake (listeners logged out)."""
        await self.consumers.wait_drained()
        await self.deliverer.wait_idle()
        await self._intake_stopped.wait()

    def _worker_nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "Pipeline.start() has not run"
        return self._nursery

    # ------------------------------------------------------------------ reload

    async def apply_config(self, new: config_mod.Config, *, targets: list[Target] | None = None) -> None:
        """Apply what can change live: consumer count, ``[[deliver]]`` targets, every provider's accounts.

        *targets*: *new*'s targets already resolved (else resolved here, handler modules reloaded).
        """
        targets = resolve_targets(new, reload_modules=True) if targets is None else targets
        self.router.update(targets)
        await self.deliverer.apply_config(targets)
        if new.daemon.consumers != self.consumers.count:
            log.event(_log, "consumers.resize", before=self.consumers.count, after=new.daemon.consumers)
            self.consumers.resize(new.daemon.consumers)
        for runtime in self.runtimes.values():
            await runtime.apply_config(new)

    # ------------------------------------------------------------------ reporting

    def summary(self) -> str:
        parts = [f"{self.consumers.count} consumers"]
        parts += [text for runtime in self.runtimes.values() if (text := runtime.summary())]
        if deliver := self.deliverer.summary():
            parts.append(deliver)
        return "; ".join(parts)

    async def refresh_gauges(self) -> None:
        """Every provider's gauges, then the queue's (Redis) and the deliveries' (PostgreSQL): one down does
        not stop the other."""
        for runtime in self.runtimes.values():
            await runtime.refresh_gauges()
        failures = []
        for refresh in (self.queue.refresh_gauges, self.deliverer.refresh_gauges):
            try:
                await refresh()
            except Exception as exc:  # noqa: BLE001 - raised below, after the other one ran
                failures.append(exc)
        if failures:
            raise failures[0]

    async def handle_webhook(self, provider: str, route: Route, request: WebhookRequest) -> WebhookReply:
        """*provider*'s answer to *request* on its *route*."""
        return await self.runtimes[provider].handle(route, request)

    def readiness_checks(self) -> dict[str, ReadinessCheck]:
        """Every provider's part of ``/readyz``: check name → check."""
        checks: dict[str, ReadinessCheck] = {}
        for runtime in self.runtimes.values():
            checks.update(runtime.readiness())
        return checks

    async def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {"consumers": {"count": self.consumers.count, "busy": self.consumers.busy},
                                "deliverer": self.deliverer.status()}
        for runtime in self.runtimes.values():
            body.update(await runtime.status())
        try:
            body["queue"] = msgspec.to_builtins(await self.queue.stats())
        except Exception as exc:  # status must answer while Redis is down, naming why
            body.setdefault("errors", {})["redis"] = f"{type(exc).__name__}: {exc}"
        return body
