"""The one backoff: exponential delays, capped, with a chosen jitter.

Every wait after a failure in inboundd is drawn here: a job's retry
(:func:`delay` with full jitter, by attempt number), a listener's reconnect
and a lease standby (:class:`Backoff` with equal jitter, reset after a
healthy period), a Redis or PostgreSQL call retried in a loop (:class:`Backoff`
without jitter, reset on success).

The ceiling of failure *n* (1 = the first) is ``min(cap, base · 2^(n-1))``;
the jitter then draws the delay from it:

* ``full`` — uniform over ``[0, ceiling]``: spreads retries of many jobs the
  most (AWS' "full jitter");
* ``equal`` — uniform over ``[ceiling/2, ceiling]``: never near zero (no hot
  loop), still never in lock-step with others that failed at the same moment;
* ``none`` — the ceiling itself.

Pure module: no I/O; time comes in as arguments.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal

__all__ = ["Backoff", "Jitter", "ceiling", "delay"]

Jitter = Literal["full", "equal", "none"]


def ceiling(failures: int, base: float, cap: float) -> float:
    """The largest delay after *failures* consecutive failures (1 = the first): ``min(cap, base · 2^(n-1))``."""
    exponent = min(max(failures, 1) - 1, 63)
    return min(cap, base * (2.0 ** exponent))


def delay(failures: int, base: float, cap: float, *, jitter: Jitter = "full", retry_after: float | None = None,
          rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failure number *failures*: the :func:`ceiling`, jittered.

    *retry_after* (what the other side asked for, e.g. HTTP ``Retry-After``)
    is a floor: never retry sooner than it.
    """
    top = ceiling(failures, base, cap)
    if jitter == "full":
        wait = top * rand()
    elif jitter == "equal":
        wait = top / 2 + rand() * top / 2
    else:
        wait = top
    if retry_after is not None and retry_after > wait:
        wait = retry_after
    return wait


class Backoff:
    """The delays of one thing failing again and again (a connection, a loop of calls).

    ``failed()`` counts a failure and returns the wait before the next try;
    ``reset()`` (a success) starts over. With *healthy_after*, a success is
    instead reported with ``connected(now)``, and the sequence starts over
    only once that connection stayed up *healthy_after* seconds — a daemon
    that has run for days does not wait the cap after one blip, and a
    server that accepts and drops at once is not retried in a hot loop.
    """

    def __init__(self, base: float, cap: float, *, jitter: Jitter = "equal", healthy_after: float | None = None,
                 rng: Callable[[], float] = random.random) -> None:
        self.base = max(base, 0.001)
        self.cap = max(cap, self.base)
        self.jitter: Jitter = jitter
        self.healthy_after = healthy_after
        self.failures = 0
        self._rng = rng
        self._connected_at: float | None = None

    def connected(self, now: float) -> None:
        """A connection (TCP, TLS, login, SELECT) succeeded at *now*."""
        self._connected_at = now

    def reset(self) -> None:
        """A success: the next failure waits the shortest delay again."""
        self.failures = 0
        self._connected_at = None

    def failed(self, now: float | None = None) -> float:
        """A try failed at *now*: count it and return the delay before the next one."""
        if (self.healthy_after is not None and self._connected_at is not None and now is not None
                and now - self._connected_at >= self.healthy_after):
            self.failures = 0
        self._connected_at = None
        self.failures += 1
        return delay(self.failures, self.base, self.cap, jitter=self.jitter, rand=self._rng)
