"""Waiting for a dependency to answer again (``inboundd.availability``), on trio's mock clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from inboundd import log, metrics
from inboundd.availability import PROBE_BASE, PROBE_CAP, Availability
from inboundd.outage import Outage


def availability(server: "Server") -> Availability:
    return Availability(Outage("postgres", log.get_logger("test"), now=trio.current_time), server.probe)


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class Server:
    """A probe target that answers from *up_at* (trio time) on; records each probe."""

    def __init__(self, up_at: float) -> None:
        self.up_at = up_at
        self.probes: list[float] = []

    async def probe(self) -> None:
        now = trio.current_time()
        self.probes.append(now)
        await trio.lowlevel.checkpoint()
        if now < self.up_at:
            raise ConnectionRefusedError("connection refused")


async def test_an_available_dependency_is_not_probed(autojump_clock: trio.testing.MockClock) -> None:
    server = Server(up_at=0)
    gate = availability(server)
    with trio.fail_after(0.001):
        await gate.wait_up()
    assert server.probes == [] and not gate.down


async def test_waiters_share_one_probe_loop_and_wake_together_soon_after_the_server_is_back(
        autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    server = Server(up_at=start + 20.0)   # a 20 s outage
    gate = availability(server)
    outages_before = metrics.REGISTRY.get_sample_value("inboundd_dependency_outages_total",
                                                       {"dependency": "postgres"}) or 0
    gate.report_down("OperationalError: connection refused")
    gate.report_down("OperationalError: again")          # one outage, however many calls saw it
    woke: list[float] = []

    async def waiter() -> None:
        await gate.wait_up()
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(waiter)
    assert len(woke) == 5 and not gate.down
    assert max(woke) - server.up_at <= PROBE_CAP       # back within one probe interval
    gaps = [b - a for a, b in zip(server.probes, server.probes[1:])]
    assert min(gaps) >= PROBE_BASE / 2                 # one loop: never a burst of probes
    assert len(server.probes) < 20 / (PROBE_BASE / 2)
    assert metrics.REGISTRY.get_sample_value("inboundd_dependency_outages_total",
                                             {"dependency": "postgres"}) == outages_before + 1


async def test_when_the_probing_waiter_is_cancelled_another_goes_on(autojump_clock: trio.testing.MockClock) -> None:
    server = Server(up_at=trio.current_time() + 5.0)
    gate = availability(server)
    gate.report_down("down")
    woke: list[str] = []

    async def waiter(name: str, scope: trio.CancelScope) -> None:
        with scope:
            await gate.wait_up()
            woke.append(name)

    first, second = trio.CancelScope(), trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "first", first)      # starts first: it runs the probe loop
        await trio.sleep(0)
        nursery.start_soon(waiter, "second", second)
        await trio.sleep(1.0)
        assert server.probes                            # the loop is running ...
        first.cancel()                                  # ... and its task goes away
    assert woke == ["second"] and not gate.down
    assert server.probes[-1] >= server.up_at
