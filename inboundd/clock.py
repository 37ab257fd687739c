"""The one clock.

Wall-clock time (``wall()``) is what is stored and shown: enqueue times, due
times of retries, lease expiries in PostgreSQL. Durations inside one process
use trio's clock (``trio.current_time()``) so tests can drive them with
``trio.testing.MockClock``. Nothing else in inboundd calls ``time.time()``.
"""

from __future__ import annotations

import time

__all__ = ["wall", "wall_ms"]


def wall() -> float:
    """Seconds since the epoch (UTC), as a float."""
    return time.time()


def wall_ms() -> int:
    """Milliseconds since the epoch (UTC), as used for Redis sorted-set scores."""
    return time.time_ns() // 1_000_000
