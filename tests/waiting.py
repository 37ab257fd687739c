"""The one way tests wait: poll a named condition until it holds or a deadline passes.

Two flavours with one semantics, for the two kinds of test code:

* :func:`wait_for` blocks the calling thread (tests driving subprocesses,
  threads or servers from plain synchronous code); it is the product's own
  poller, :func:`inboundd.trial.servers.wait_until`, failing as a test fails;
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
from typing import Any, Callable

import trio

from inboundd.trial import servers

__all__ = ["eventually", "wait_for"]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Block until ``predicate()`` returns a true value and return it; fail naming *what* after *timeout* s."""
    try:
        return servers.wait_until(predicate, timeout, what, interval, fatal=(AssertionError,))
    except servers.ServerFailed as exc:  # the deadline passed: a failed test, not a failed server
        raise AssertionError(str(exc)) from None


async def eventually(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Sleep (trio) until *predicate* holds and return its value; fail naming *what* after *timeout* s.

    *predicate* may be a plain function or return an awaitable (an ``async``
    function, or a lambda returning a coroutine): the awaited result counts.
    Cancellation is honoured at every sleep.
    """
    deadline = trio.current_time() + timeout
    last: Exception | None = None
    while True:
        try:
            value = predicate()
            if value := (await value if inspect.isawaitable(value) else value):
                return value
        except AssertionError:
            raise
        except Exception as exc:  # not ready yet
            last = exc
        if trio.current_time() >= deadline:
            detail = f" (last error: {type(last).__name__}: {last})" if last else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        await trio.sleep(interval)
