"""What a provider offers the daemon: the contract every package under ``providers/`` fulfils.

A provider (IMAP; Microsoft Graph and Gmail next) is described by one
:class:`Provider` value: its name (the job's provider tag and its ``[[name]]``
configuration section), the type of that section, its public HTTP routes,
how ``inboundctl status`` shows its part (:class:`StatusView`, pure), and
how to build its live part for one daemon (:class:`Runtime`): the long-lived
tasks it runs (listeners, renewers), the consume-time :class:`~inboundd.source.Source`,
its answers to its routes, its part of ``/readyz`` and of the status
document, and what it does on drain, resume and reload.

The contract sits one floor below its implementations; the registry of the
providers of this build is ``inboundd.providers``. The daemon (pipeline,
HTTP app, status, configuration) iterates over the registry and never names
a provider.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from .health import StatusView
from .ingress.webhook import Route, WebhookReply, WebhookRequest
from .source import Source

if TYPE_CHECKING:
    from .availability import Dependencies
    from .ingress.cursors import CursorStore
    from .queue import Queue
    from .redisio import RedisIO
    from .store.db import Database

__all__ = ["AccountBusy", "Context", "Provider", "ReadinessCheck", "Runtime", "StatusView", "Unsubscribe"]

#: A readiness check: returns when ready, raises (with the reason) when not.
ReadinessCheck = Callable[[], Awaitable[None]]

#: ``inboundctl unsubscribe``: ``await unsubscribe(cfg, account_id, rio, db)`` deletes what the provider
#: keeps registered for the account at its side (Graph subscriptions, a Gmail watch) and returns one
#: (what, outcome) pair per item; raises :class:`AccountBusy` while a running daemon owns the account.
Unsubscribe = Callable[[Any, str, Any, Any], Awaitable[list[tuple[str, str]]]]


class AccountBusy(Exception):
    """A running daemon owns the account (holds its lease): leave its registrations alone."""


@dataclass(frozen=True)
class Context:
    """What a daemon hands a provider when it builds its runtime."""

    #: The whole configuration (``inboundd.config.Config``); the provider reads its own section.
    cfg: Any
    #: Where pointer jobs go: ``await queue.enqueue_many(jobs)`` returns once Redis acknowledged them.
    queue: "Queue"
    rio: "RedisIO"
    db: "Database"
    cursors: "CursorStore"
    instance_id: str
    key_prefix: str
    #: Whether the daemon serves its webhook routes now (not while starting or draining): a provider
    #: whose subscription needs a callback answered at once (Graph's validation handshake) waits for it.
    intake_open: Callable[[], bool] = lambda: True
    #: Redis's and PostgreSQL's availability: an ingress session that ended because one stopped answering
    #: waits for it (``dependencies.down(exc)``) instead of backing off as if its own server had failed.
    dependencies: "Dependencies | None" = None


class Runtime:
    """A provider's live part in one daemon. Every method has a do-nothing default; override what applies.

    Lifecycle, driven by the pipeline: :meth:`run` in the daemon's worker
    nursery (cancelled at shutdown), :meth:`stop_intake` / :meth:`resume_intake`
    on drain and resume, :meth:`apply_config` on SIGHUP, :meth:`aclose` once
    every task stopped.
    """

    #: The consume-time half, registered for jobs of this provider; None: this provider's jobs cannot be fetched.
    source: Source | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the long-lived tasks until cancelled; report started once each reported started.

        On cancellation every task ends cleanly (bounded) before this returns.
        """
        task_status.started()

    async def stop_intake(self) -> None:
        """Stop taking mail in (drain); returns once stopped. Routes answer 503 meanwhile (the HTTP app)."""

    async def resume_intake(self) -> None:
        """Take mail in again after :meth:`stop_intake`; returns once started."""

    async def apply_config(self, cfg: Any) -> None:
        """Apply a reloaded configuration (accounts added, removed, changed)."""

    async def handle(self, route: Route, request: WebhookRequest) -> WebhookReply:
        """Answer a request to one of this provider's routes."""
        return WebhookReply.json(404, {"error": f"{route.method} {route.path} is not served"})

    def readiness(self) -> Mapping[str, ReadinessCheck]:
        """This provider's part of ``/readyz``: check name → check."""
        return {}

    async def status(self) -> dict[str, Any]:
        """This provider's part of the status document (top-level keys, e.g. ``listeners``)."""
        return {}

    def summary(self) -> str | None:
        """A few words for systemd's STATUS line (e.g. ``listeners: 2 idle``), or None."""
        return None

    async def refresh_gauges(self) -> None:
        """Bring this provider's gauges up to date (called before ``/metrics`` renders)."""

    async def aclose(self) -> None:
        """Release what the runtime holds (connection pools); called once, shielded."""


@dataclass(frozen=True)
class Provider:
    """One provider, as the registry lists it."""

    #: The job's provider tag, the ``[[name]]`` configuration section, and the name in metrics and logs.
    name: str
    #: The type of one ``[[name]]`` table (a configuration section with ``id`` and ``tenant``).
    account_config: type
    #: Builds the provider's live part for one daemon.
    build: Callable[[Context], Runtime]
    #: Routes on the public HTTP server (answered by ``Runtime.handle``).
    routes: tuple[Route, ...] = ()
    #: How ``inboundctl status`` shows the provider's part; None: nothing to show.
    status_view: StatusView | None = None
    #: ``inboundctl unsubscribe``; None: the provider registers nothing at its side.
    unsubscribe: Unsubscribe | None = None
    #: Checks across the provider's accounts, and of their secrets' contents, once every secret is read:
    #: ``check(cfg, problems)`` appends ``"key.path: what is wrong"`` lines.
    check: Callable[[Any, list[str]], None] | None = None

    def accounts(self, cfg: Any) -> list[Any]:
        """The ``[[name]]`` tables of *cfg*."""
        return list(getattr(cfg, self.name, None) or [])
