"""Waiting until a dependency every job needs (PostgreSQL) answers again.

When PostgreSQL is unreachable, every job fails the same way: retrying each
through the queue with backoff only delays the recovery (a job due to retry
minutes after the server came back) and burns the jobs' retry budget. The
processor instead reports the outage here and raises
:class:`~inboundd.outcomes.DependencyDown`; consumers keep their jobs and wait
in :meth:`Availability.wait_up`, where one shared probe loop asks the server
every 0.25 s to 2 s (equal jitter), so jobs run again within about two
seconds of the server answering.

The outage itself is logged by the dependency's :class:`~inboundd.outage.Outage`
(``postgres.down``, ``postgres.still_down``, ``postgres.up``), which the
failures and the successful probe are reported to; this module only decides
when jobs may run again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from . import metrics
from .backoff import Backoff
from .outage import Outage

__all__ = ["Availability"]

#: Probe delays while a dependency is down (seconds; doubling, equal jitter).
PROBE_BASE, PROBE_CAP = 0.25, 2.0


class Availability:
    """One dependency's availability for jobs; see the module docstring.

    *probe* raises unless the dependency answers (bounded by the probe
    itself); *outage* logs the dependency's changes of state.
    """

    def __init__(self, outage: Outage, probe: Callable[[], Awaitable[None]], *, base: float = PROBE_BASE,
                 cap: float = PROBE_CAP) -> None:
        self.outage = outage
        self.name = outage.name
        self._probe = probe
        self._backoff = Backoff(base, cap)
        self._down = False
        self._probing = False
        self._changed = trio.Event()

    @property
    def down(self) -> bool:
        """Whether jobs found the dependency unreachable, and no probe found it answering since."""
        return self._down

    def report_down(self, error: BaseException | str) -> None:
        """A job's call found the dependency unreachable (*error* says how)."""
        self.outage.failed(error)
        if not self._down:
            self._down = True
            metrics.dependency_outages.labels(self.name).inc()

    async def wait_up(self) -> None:
        """Return once the dependency answers: at once if it is not known down, else after a successful probe.

        Waiters share one probe loop; if the task probing is cancelled,
        another waiter goes on probing. Cancellation is honoured at once.
        """
        while self._down:
            if self._probing:
                await self._changed.wait()
                continue
            self._probing = True
            try:
                await trio.sleep(self._backoff.failed())
                try:
                    await self._probe()
                except Exception as exc:  # still down: probe again after the next delay
                    self.outage.failed(exc)
                    continue
                self._down = False
                self._backoff.reset()
                self.outage.succeeded()
            finally:
                self._probing = False
                self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
