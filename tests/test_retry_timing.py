"""When the daemon's own retry loops try again (``inboundd.backoff``), on trio's mock clock.

A consumer whose Redis calls fail, and the start-up wait for PostgreSQL,
against fakes that fail on cue: with ``MockClock`` (autojump) the times of
the attempts are exact, whatever the machine's load.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis
import trio
import trio.testing

from inboundd.config import QueueConfig
from inboundd.consumer import REDIS_RETRY_CAP, STRANDED_CHECK_EVERY, ConsumerPool
from inboundd.outcomes import Outcome
from inboundd.outage import Outage
from inboundd.pipeline import STARTUP_RETRY_CAP, Pipeline


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class FailingQueue:
    """The consumer's side of the queue; each call fails while its script says so."""

    def __init__(self, own_pending_failures: int, claim_script: list[bool]) -> None:
        self.own_pending_failures = own_pending_failures
        #: One entry per claim: True fails it, False answers an empty batch after the 1 s block.
        self.claim_script = claim_script
        self.calls: dict[str, list[float]] = {"own_pending": [], "claim": []}

    async def try_ensure_group(self) -> bool:
        return False

    async def own_pending(self, consumer: str) -> list[Any]:
        self.calls["own_pending"].append(trio.current_time())
        if len(self.calls["own_pending"]) <= self.own_pending_failures:
            raise redis.ConnectionError("Connection refused")
        return []

    async def ack_and_claim(self, consumer: str, acks: list[Any], count: int) -> tuple[list[bool], list[Any]]:
        """The claim round's first Redis call (ack + non-blocking claim): it fails, or finds nothing ready."""
        self.calls["claim"].append(trio.current_time())
        fail = self.claim_script.pop(0) if self.claim_script else False
        if fail:
            raise redis.ConnectionError("Connection refused")
        return [], []

    async def claim(self, consumer: str, count: int) -> list[Any]:
        await trio.sleep(1.0)  # XREADGROUP … BLOCK 1000 with nothing to read
        return []

    async def heartbeat(self, consumer: str, entry_ids: list[str]) -> list[str]:
        return []


class NoHandler:
    async def handle(self, job: Any) -> Outcome:
        raise AssertionError("nothing is claimed")


async def test_a_consumer_retries_redis_with_doubling_delays_reset_by_a_success(autojump_clock):
    queue = FailingQueue(own_pending_failures=3, claim_script=[True] * 4 + [False, False] + [True] * 8)
    pool = ConsumerPool(queue, NoHandler(), QueueConfig(), "test", count=1)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        started_at = trio.current_time()
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert started_at == 0.0                    # started at the first failure: the daemon comes up degraded
    start_up, checks = queue.calls["own_pending"][:4], queue.calls["own_pending"][4:]
    assert start_up == pytest.approx([0.0, 0.1, 0.3, 0.7])
    # After a failed claim, the claims of the next lease first look for entries delivered all the same,
    # at most once a second.
    assert checks and all(any(abs(c - t) < 1e-6 for t in queue.calls["claim"]) for c in checks)
    assert all(b - a >= STRANDED_CHECK_EVERY - 1e-6 for a, b in zip(checks, checks[1:]))
    claims = [t - 0.7 for t in queue.calls["claim"]]
    assert claims[:7] == pytest.approx([0.0, 0.1, 0.3, 0.7, 1.5, 2.5, 3.5])  # two good claims block 1 s each
    gaps = [b - a for a, b in zip(claims[6:], claims[7:])]
    assert gaps[:7] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, REDIS_RETRY_CAP])  # reset, then doubling


class Daemon:
    """What the start-up wait tells the daemon: what it is waiting for."""

    def __init__(self) -> None:
        self.details: list[str] = []

    def starting(self, detail: str) -> None:
        self.details.append(detail)


class UnreachableDb:
    """PostgreSQL that comes up after *failures* connection attempts."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[float] = []
        self.outage = Outage("postgres", logging.getLogger("test"))

    async def run(self, fn: Any) -> list[int]:
        self.calls.append(trio.current_time())
        if len(self.calls) <= self.failures:
            raise OSError("connection refused")
        return []


async def test_start_up_waits_for_postgresql_with_doubling_delays_up_to_the_cap(autojump_clock):
    daemon, db = Daemon(), UnreachableDb(failures=7)
    await Pipeline._migrate_when_reachable(daemon, db)  # type: ignore[arg-type]
    assert db.calls == pytest.approx([0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 15.5 + STARTUP_RETRY_CAP, 25.5 + STARTUP_RETRY_CAP])
    assert daemon.details[0] == "waiting for postgres (last error: OSError: connection refused)"
