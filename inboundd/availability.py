"""Whether a dependency every job needs (PostgreSQL) answers, and a wait until it answers again.

When PostgreSQL is unreachable, every job fails the same way: retrying each
through the queue with backoff only delays the recovery (a job due to retry
minutes after the server came back) and burns the jobs' retry budget. The
processor instead reports the outage here and raises
:class:`~inboundd.outcomes.DependencyDown`; consumers keep their jobs and wait
in :meth:`Availability.wait_up`, where one shared probe loop asks the server
every 0.25 s to 2 s (equal jitter), so jobs run again within about two
seconds of the server answering.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from . import log, metrics
from .backoff import Backoff

__all__ = ["Availability"]

_log = log.get_logger("availability")

#: Probe delays while a dependency is down (seconds; doubling, equal jitter).
PROBE_BASE, PROBE_CAP = 0.25, 2.0


class Availability:
    """One dependency's availability; see the module docstring.

    *probe* raises unless the dependency answers (bounded by the probe itself).
    """

    def __init__(self, name: str, probe: Callable[[], Awaitable[None]], *, base: float = PROBE_BASE,
                 cap: float = PROBE_CAP) -> None:
        self.name = name
        self._probe = probe
        self._backoff = Backoff(base, cap)
        self._down_since: float | None = None
        self._last_error = ""
        self._probing = False
        self._changed = trio.Event()

    @property
    def down(self) -> bool:
        """Whether the dependency is known not to answer (since the last failure, until a probe succeeds)."""
        return self._down_since is not None

    def report_down(self, error: str) -> None:
        """A call found the dependency unreachable (*error* says how)."""
        self._last_error = error
        if self._down_since is None:
            self._down_since = trio.current_time()
            metrics.dependency_outages.labels(self.name).inc()
            log.event(_log, "dependency.down", level=logging.WARNING, dependency=self.name, error=error)

    async def wait_up(self) -> None:
        """Return once the dependency answers: at once if it is not known down, else after a successful probe.

        Waiters share one probe loop; if the task probing is cancelled,
        another waiter goes on probing. Cancellation is honoured at once.
        """
        while self._down_since is not None:
            if self._probing:
                await self._changed.wait()
                continue
            self._probing = True
            try:
                await trio.sleep(self._backoff.failed())
                try:
                    await self._probe()
                except Exception as exc:  # still down: probe again after the next delay
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    continue
                self._up()
            finally:
                self._probing = False
                self._notify()

    def _up(self) -> None:
        if self._down_since is not None:
            log.event(_log, "dependency.up", dependency=self.name,
                      down_for=round(trio.current_time() - self._down_since, 3), last_error=self._last_error)
        self._down_since = None
        self._backoff.reset()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
