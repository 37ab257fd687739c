"""Retry decisions and the one backoff (``inboundd.backoff``): pure functions, table-tested."""

from __future__ import annotations

import pytest

from inboundd.config import QueueConfig
from inboundd.backoff import Backoff, delay
from inboundd.consumer import decide
from inboundd.jobs import ImapPointer, new_job
from inboundd.outcomes import Outcome, PermanentError, TransientError

CFG = QueueConfig(max_attempts=3, backoff_base=5.0, backoff_cap=60.0, transient_attempts=4)
JOB = new_job(ImapPointer(account="a", folder="INBOX", uidvalidity=1, uid=1), tenant="t")


@pytest.mark.parametrize("attempt, ceiling", [(1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (50, 60), (10**6, 60)])
def test_ceiling_doubles_then_caps(attempt: int, ceiling: float) -> None:
    assert delay(attempt, 5, 60, rand=lambda: 1.0) == ceiling
    assert delay(attempt, 5, 60, rand=lambda: 0.0) == 0.0  # full jitter reaches zero


def test_full_jitter_spreads_over_the_whole_range() -> None:
    import random

    rng = random.Random(1)
    delays = [delay(3, 5, 60, rand=rng.random) for _ in range(2000)]
    assert min(delays) < 1 and max(delays) > 19 and all(0 <= d <= 20 for d in delays)


def test_retry_after_is_a_floor() -> None:
    assert delay(1, 5, 60, retry_after=30, rand=lambda: 0.5) == 30
    assert delay(4, 5, 60, retry_after=1, rand=lambda: 0.5) == 20


def test_an_outcome_is_acked_whatever_its_status() -> None:
    for status in ("processed", "duplicate", "skipped"):
        assert decide(JOB, Outcome(status), CFG).action == "ack"  # type: ignore[arg-type]


def test_job_errors_count_attempts_and_dead_letter_at_max_attempts() -> None:
    job, delays = JOB, []
    for expected_attempt in (1, 2):
        d = decide(job, ValueError("boom"), CFG, rand=lambda: 1.0)
        assert (d.action, d.kind, d.job.attempt) == ("retry", "error", expected_attempt)
        delays.append(d.delay)
        job = d.job
    assert delays == [5.0, 10.0]
    d = decide(job, ValueError("boom"), CFG)
    assert (d.action, d.reason, d.attempts, d.error) == ("dead_letter", "max_attempts", 3, "ValueError: boom")


def test_transient_errors_do_not_burn_attempts_up_to_their_ceiling() -> None:
    job = JOB
    for n in (1, 2, 3):
        d = decide(job, TransientError("pg down"), CFG, rand=lambda: 1.0)
        assert (d.action, d.kind, d.job.attempt, d.job.transient) == ("retry", "transient", 0, n)
        job = d.job
    d = decide(job, TransientError("pg down"), CFG)
    assert (d.action, d.reason) == ("dead_letter", "transient_exhausted")


def test_transient_retry_after_is_honoured() -> None:
    d = decide(JOB, TransientError("429", retry_after=45.0), CFG, rand=lambda: 0.0)
    assert d.delay == 45.0


def test_permanent_error_dead_letters_at_once_with_its_reason() -> None:
    d = decide(JOB, PermanentError("message_gone", "404 from Graph"), CFG)
    assert (d.action, d.reason, d.attempts, d.error) == ("dead_letter", "message_gone", 1,
                                                         "PermanentError: 404 from Graph")


# --------------------------------------------------------------------------- backoff


def test_backoff_grows_exponentially_with_jitter_and_caps():
    low = Backoff(1.0, 30.0, rng=lambda: 0.0)
    high = Backoff(1.0, 30.0, rng=lambda: 1.0)
    assert [low.failed(0) for _ in range(7)] == [0.5, 1, 2, 4, 8, 15, 15]
    assert [high.failed(0) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_backoff_resets_only_after_a_healthy_period():
    backoff = Backoff(1.0, 60.0, healthy_after=60.0, rng=lambda: 1.0)
    assert [backoff.failed(t) for t in (0, 1, 2)] == [1, 2, 4]
    backoff.connected(10)
    assert backoff.failed(30) == 8  # up for 20 s: a flapping server keeps backing off
    backoff.connected(100)
    assert backoff.failed(160) == 1  # up for 60 s: healthy, start over


def test_backoff_is_never_zero():
    assert Backoff(0, 0, rng=lambda: 0.0).failed(0) > 0


def test_backoff_without_jitter_doubles_to_the_cap_and_a_reset_starts_over():
    backoff = Backoff(0.1, 5.0, jitter="none")
    assert [backoff.failed() for _ in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    backoff.reset()
    assert backoff.failed() == 0.1


@pytest.mark.parametrize("jitter, rand, expected", [
    ("full", 0.0, 0.0), ("full", 0.5, 10.0), ("full", 1.0, 20.0),
    ("equal", 0.0, 10.0), ("equal", 1.0, 20.0), ("none", 0.0, 20.0), ("none", 1.0, 20.0),
])
def test_jitter_draws_from_its_range(jitter, rand, expected):
    assert delay(3, 5, 60, jitter=jitter, rand=lambda: rand) == expected
