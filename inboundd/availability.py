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

Ingress waits the same way: :class:`Dependencies` holds the daemon's gates
(Redis, PostgreSQL) and tells an IMAP listener whether its session ended
because one of them stopped answering rather than its own server, so the
listener waits for that dependency and reconnects as soon as it answers —
its reconnect backoff, which is about its own server, is left as it was.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from . import metrics
from .backoff import Backoff
from .outage import Outage, one_line
from .outcomes import DependencyDown

__all__ = ["Availability", "Dependencies"]

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


class Dependencies:
    """The daemon's shared dependencies, one :class:`Availability` each, and the failures that show one down."""

    def __init__(self) -> None:
        self._gates: list[tuple[Availability, Callable[[BaseException], bool]]] = []

    def add(self, gate: Availability, shows_down: Callable[[BaseException], bool]) -> Availability:
        """Register *gate*; *shows_down* tells whether a failure means its dependency does not answer."""
        self._gates.append((gate, shows_down))
        return gate

    def down(self, exc: BaseException) -> DependencyDown | None:
        """*exc* as :class:`~inboundd.outcomes.DependencyDown` (reported to its gate) if it shows one down, else None."""
        for gate, shows_down in self._gates:
            if shows_down(exc):
                gate.report_down(exc)
                return DependencyDown(f"{gate.name} not answering: {one_line(exc)}", dependency=gate.name,
                                      wait_up=gate.wait_up)
        return None
