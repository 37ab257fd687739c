"""Retry decisions and backoff math: pure functions, table-tested."""

from __future__ import annotations

import pytest

from inboundd.config import QueueConfig
from inboundd.consumer import decide, retry_delay
from inboundd.jobs import ImapPointer, new_job
from inboundd.outcomes import Outcome, PermanentError, TransientError

CFG = QueueConfig(max_attempts=3, backoff_base=5.0, backoff_cap=60.0, transient_attempts=4)
JOB = new_job(ImapPointer(account="a", folder="INBOX", uidvalidity=1, uid=1), tenant="t")


@pytest.mark.parametrize("attempt, ceiling", [(1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (50, 60), (10**6, 60)])
def test_ceiling_doubles_then_caps(attempt: int, ceiling: float) -> None:
    assert retry_delay(attempt, 5, 60, rand=lambda: 1.0) == ceiling
    assert retry_delay(attempt, 5, 60, rand=lambda: 0.0) == 0.0  # full jitter reaches zero


def test_full_jitter_spreads_over_the_whole_range() -> None:
    import random

    rng = random.Random(1)
    delays = [retry_delay(3, 5, 60, rand=rng.random) for _ in range(2000)]
    assert min(delays) < 1 and max(delays) > 19 and all(0 <= d <= 20 for d in delays)


def test_retry_after_is_a_floor() -> None:
    assert retry_delay(1, 5, 60, retry_after=30, rand=lambda: 0.5) == 30
    assert retry_delay(4, 5, 60, retry_after=1, rand=lambda: 0.5) == 20


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
