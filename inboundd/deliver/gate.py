"""Whether a target may be sent to now: one daemon's view of one target's availability, pure.

``open``: send up to the target's concurrency. After an attempt that says
the target as a whole is unavailable (connection refused, timeout, 429,
502–504; see ``wire.py``), the gate is ``paused`` for the one backoff of the
*target* (equal jitter, ``Retry-After`` as a floor): nothing is claimed, so
a receiver that is down costs one request per pause rather than one per
delivery, and its deliveries do not use up their attempts. Once the pause
ends the gate is ``probing``: exactly one request, to the target's oldest
pending delivery whether due or not. A failed probe pauses again, longer;
any delivered answer opens the gate, and :meth:`Gate.delivered` then says
how far back (seconds) the outage began, so the deliveries that failed
during it are made due at once and the backlog drains oldest first.

Other failures (a 500, say) are usually one message's problem: they pause
the gate only when :data:`FAILURE_STREAK` of them come in a row with no
delivery between (the application behind the receiver is broken). Failures
of requests sent before the gate paused do not lengthen the pause.
Time comes in as arguments (``trio.current_time()`` in the deliverer).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal

from ..backoff import Backoff

__all__ = ["FAILURE_STREAK", "Gate"]

#: Consecutive message failures (not saying "unavailable") that pause the gate as if the target were down.
FAILURE_STREAK = 3


class Gate:
    """One target's availability, as seen by one deliverer (see the module docstring)."""

    def __init__(self, base: float, cap: float, *, rng: Callable[[], float] = random.random) -> None:
        self._backoff = Backoff(base, cap, jitter="equal", rng=rng)
        self._paused_until: float | None = None
        self._outage_since: float | None = None
        self._streak = 0
        self.last_error: str | None = None

    def state(self, now: float) -> Literal["open", "paused", "probing"]:
        if self._paused_until is None:
            return "open"
        return "paused" if now < self._paused_until else "probing"

    def allowance(self, now: float, concurrency: int) -> int:
        """How many requests may be in flight now: the concurrency, 1 (the probe), or 0."""
        state = self.state(now)
        return concurrency if state == "open" else (1 if state == "probing" else 0)

    def wait(self, now: float) -> float:
        """Seconds until the pause ends (0 when not paused)."""
        return max(0.0, self._paused_until - now) if self._paused_until is not None else 0.0

    @property
    def failures(self) -> int:
        """Consecutive pauses of the current outage (0 when open)."""
        return self._backoff.failures

    def unavailable(self, now: float, retry_after: float | None, error: str | None) -> float:
        """An attempt found the target unavailable at *now*; returns the seconds paused from now."""
        self.last_error = error
        if self._outage_since is None:
            self._outage_since = now
        if self._paused_until is not None and now < self._paused_until:
            # A request sent before the pause began: keep the pause (longer only if asked to).
            if retry_after is not None:
                self._paused_until = max(self._paused_until, now + retry_after)
            return self._paused_until - now
        pause = self._backoff.failed()
        if retry_after is not None:
            pause = max(pause, retry_after)
        self._paused_until = now + pause
        return pause

    def failed(self, now: float, error: str | None) -> float | None:
        """An attempt failed for a reason of its own message at *now*; the pause if this made a streak."""
        self.last_error = error
        self._streak += 1
        if self._streak >= FAILURE_STREAK:
            self._streak = 0
            return self.unavailable(now, None, error)
        return None

    def delivered(self, now: float) -> float | None:
        """A delivery succeeded at *now*: open. Returns the outage's length in seconds if there was one."""
        since = self._outage_since
        self._paused_until = None
        self._outage_since = None
        self._streak = 0
        self._backoff.reset()
        self.last_error = None
        return None if since is None else now - since
