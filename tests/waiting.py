"""The one way tests wait: poll a named condition until it holds or a deadline passes.

Two flavours with one semantics, for the two kinds of test code:

* :func:`wait_for` blocks the calling thread (tests driving subprocesses,
  threads or servers from plain synchronous code);
* :func:`eventually` sleeps on trio's clock (tests running inside trio), so
  it never blocks the event loop and follows a ``MockClock`` where one is used.

Both poll *predicate* every *interval* seconds and return its first true
value. An exception from the predicate other than ``AssertionError`` means
"not yet" (a server still starting, a row not yet written); an
``AssertionError`` fails at once, since the predicate itself found the result
wrong. At the deadline they fail with an ``AssertionError`` naming *what*
was awaited and, if the predicate raised, the last error it raised.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Callable

import trio

__all__ = ["eventually", "wait_for"]


class _Poll:
    """The deadline of one wait, and the last error the predicate raised before it."""

    def __init__(self, what: str, timeout: float, now: float) -> None:
        self.what = what
        self.timeout = timeout
        self.deadline = now + timeout
        self.last_error: Exception | None = None

    def not_yet(self, error: Exception) -> None:
        """Keep *error* for the report, unless it is an ``AssertionError``: that one fails at once."""
        if isinstance(error, AssertionError):
            raise error
        self.last_error = error

    def check_deadline(self, now: float) -> None:
        if now >= self.deadline:
            detail = f" (last error: {type(self.last_error).__name__}: {self.last_error})" if self.last_error else ""
            raise AssertionError(f"timed out after {self.timeout:g}s waiting for {self.what}{detail}")


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Block until ``predicate()`` returns a true value and return it; fail naming *what* after *timeout* s."""
    poll = _Poll(what, timeout, time.monotonic())
    while True:
        try:
            if value := predicate():
                return value
        except Exception as exc:
            poll.not_yet(exc)
        poll.check_deadline(time.monotonic())
        time.sleep(interval)


async def eventually(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Sleep (trio) until *predicate* holds and return its value; fail naming *what* after *timeout* s.

    *predicate* may be a plain function or return an awaitable (an ``async``
    function, or a lambda returning a coroutine): the awaited result counts.
    Cancellation is honoured at every sleep.
    """
    poll = _Poll(what, timeout, trio.current_time())
    while True:
        try:
            value = predicate()
            if value := (await value if inspect.isawaitable(value) else value):
                return value
        except Exception as exc:
            poll.not_yet(exc)
        poll.check_deadline(trio.current_time())
        await trio.sleep(interval)
