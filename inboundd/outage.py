"""Logging a dependency's outage by its changes of state, not by its failures.

When Redis or PostgreSQL is down, every task that uses it fails, again and
again: logging each failure drowns the one fact an operator needs. An
:class:`Outage` turns the stream of failures and successes of one dependency
into three events:

* ``<name>.down`` (warning) at the first failure, with the error;
* ``<name>.still_down`` (warning) at most once per *every* seconds while
  failures go on, with how many there were and the last error;
* ``<name>.up`` (info) at the first success after that, with how long it
  was down and how many failures it saw.

Failures and successes may be reported from any thread (a connection pool's
workers) and from trio tasks; *now* is the clock it measures with (trio's in
a trio task, ``time.monotonic`` across threads).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from . import log

__all__ = ["STILL_DOWN_EVERY", "Outage", "Unreachable", "one_line"]

#: How often an ongoing outage is logged again (seconds).
STILL_DOWN_EVERY = 60.0


def one_line(error: BaseException | str) -> str:
    """*error* as one line: its type and text, white space folded (libpq's messages span lines)."""
    if isinstance(error, BaseException):
        text = " ".join(str(error).split())
        error = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return " ".join(str(error).split())


class Unreachable(Exception):
    """A dependency is known not to answer; ``str()`` is what went wrong (the last error, one line)."""


class Outage:
    """The state of one dependency as its users found it; see the module docstring."""

    def __init__(self, name: str, logger: logging.Logger, *, every: float = STILL_DOWN_EVERY,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._log = logger
        self._every = every
        self._now = now
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._logged_at = 0.0
        self._failures = 0
        self._unlogged = 0
        #: The last failure's error, one line (kept after recovery: what went wrong last time).
        self.last_error: str | None = None

    @property
    def down(self) -> bool:
        """Whether the last report was a failure."""
        return self._down_since is not None

    def failed(self, error: BaseException | str, **fields: Any) -> None:
        """A use of the dependency failed because it is unreachable; log it if it is news."""
        text = one_line(error)
        with self._lock:
            now = self._now()
            self.last_error = text
            self._failures += 1
            if self._down_since is None:
                self._down_since, self._logged_at, self._failures, self._unlogged = now, now, 1, 0
                event, extra = "down", {}
            elif now - self._logged_at >= self._every:
                event = "still_down"
                extra = {"failures": self._failures, "since_last": self._unlogged + 1,
                         "down_for": round(now - self._down_since, 1)}
                self._logged_at, self._unlogged = now, 0
            else:
                self._unlogged += 1
                return
        log.event(self._log, f"{self.name}.{event}", level=logging.WARNING, error=text, **extra, **fields)

    def succeeded(self) -> None:
        """A use of the dependency succeeded; log that it is back if it was down."""
        if self._down_since is None:  # the common case, without the lock
            return
        with self._lock:
            if self._down_since is None:
                return
            down_for, failures = self._now() - self._down_since, self._failures
            self._down_since, self._failures, self._unlogged = None, 0, 0
        log.event(self._log, f"{self.name}.up", down_for=round(down_for, 1), failures=failures,
                  last_error=self.last_error)
