"""The test bed's one polling helper: a named condition, a deadline, the last error in the report."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from waiting import eventually, wait_for


def test_wait_for_returns_the_first_true_value() -> None:
    polls = itertools.count()
    assert wait_for(lambda: next(polls) >= 3 and "ready", 5, "the third poll", interval=0.001) == "ready"


def test_wait_for_names_the_condition_and_the_last_error_at_the_deadline() -> None:
    with pytest.raises(AssertionError, match=r"^timed out after 0.05s waiting for the row$"):
        wait_for(lambda: False, 0.05, "the row", interval=0.001)

    errors = iter([ConnectionRefusedError("refused"), KeyError("row")])

    def predicate() -> bool:
        error = next(errors, None)
        if error is not None:
            raise error
        return False  # later polls say "not yet" without an error: the last error is still the news

    with pytest.raises(AssertionError, match=r"waiting for the row \(last error: KeyError: 'row'\)$"):
        wait_for(predicate, 0.05, "the row", interval=0.001)


def test_wait_for_fails_at_once_when_the_predicate_asserts() -> None:
    polls = itertools.count()

    def predicate() -> bool:
        next(polls)
        raise AssertionError("wrong result")

    with pytest.raises(AssertionError, match="wrong result"):
        wait_for(predicate, 60, "never")
    assert next(polls) == 1


async def test_eventually_awaits_async_predicates_and_sync_ones_returning_awaitables() -> None:
    polls = itertools.count()

    async def third() -> str | bool:
        return next(polls) >= 2 and "ready"

    assert await eventually(third, 5, "the third poll", interval=0.001) == "ready"
    assert await eventually(lambda: third(), 5, "a later poll", interval=0.001) == "ready"
    assert await eventually(lambda: 42, 5, "a plain value") == 42


async def test_eventually_keeps_the_deadline_on_trios_clock_and_reports_the_last_error() -> None:
    # Runs under a MockClock in a nested trio.run: the deadline is virtual, the test instant.
    def run() -> str:
        async def main() -> str:
            with pytest.raises(AssertionError) as caught:
                await eventually(lambda: {}["cursor"], 600, "the cursor")
            assert trio.current_time() >= 600
            return str(caught.value)

        return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    message = await trio.to_thread.run_sync(run)
    assert message == "timed out after 600s waiting for the cursor (last error: KeyError: 'cursor')"


async def test_eventually_fails_at_once_when_the_predicate_asserts_and_honours_cancellation() -> None:
    def wrong() -> bool:
        raise AssertionError("wrong result")

    with trio.fail_after(5), pytest.raises(AssertionError, match="wrong result"):
        await eventually(wrong, 60, "never")
    with trio.move_on_after(0.05) as scope:
        await eventually(lambda: False, 60, "never")
    assert scope.cancelled_caught
