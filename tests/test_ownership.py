"""Work only while holding the lease (``inboundd.ingress.ownership``), on trio's mock clock.

The lease here is an in-memory fake whose answers each test scripts; every
wait of the code under test runs on trio's clock, so ``MockClock`` with
autojump makes the timing exact and immune to a loaded machine.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from inboundd.ingress.ownership import STANDBY_MAX_WAIT, Ownership


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class FakeLease:
    """A lease whose holder, renewal answers and failures the test decides."""

    def __init__(self, ttl: float = 3.0) -> None:
        self.ttl = ttl
        self.token: int | None = None
        self.value: str | None = None
        self.held_by_other_for: float | None = None  # seconds another owner still holds it
        self.failing = False                          # Redis unreachable
        self.renew_answer = True
        self.owner_answer = True
        self.calls: list[tuple[str, float]] = []
        self.fence = 0
        self.took_over = False
        self.taken_from: str | None = None
        #: The next acquisition finds the lease held by an earlier life of this instance.
        self.held_by_earlier_life: str | None = None
        self.take_over_asked: list[bool] = []

    def _call(self, name: str) -> None:
        self.calls.append((name, trio.current_time()))
        if self.failing:
            raise ConnectionError("redis down")

    async def try_acquire(self, *, take_over_own: bool = False) -> float | None:
        await trio.lowlevel.checkpoint()
        self._call("acquire")
        self.take_over_asked.append(take_over_own)
        if self.held_by_other_for is not None:
            return self.held_by_other_for
        self.took_over, self.taken_from = False, None
        if self.held_by_earlier_life is not None:
            if not take_over_own:
                return self.ttl
            self.took_over, self.taken_from, self.held_by_earlier_life = True, self.held_by_earlier_life, None
        self.fence += 1
        self.token, self.value = self.fence, f"me|{self.fence}"
        return None

    async def renew(self) -> bool:
        await trio.lowlevel.checkpoint()
        self._call("renew")
        return self.renew_answer

    async def still_owner(self) -> bool:
        await trio.lowlevel.checkpoint()
        self._call("check")
        return self.owner_answer

    def forget(self) -> None:
        self.token, self.value = None, None

    async def release(self) -> None:
        self.calls.append(("release", trio.current_time()))
        self.token, self.value = None, None


class Work:
    """The guarded work: records when it started and how it ended."""

    def __init__(self) -> None:
        self.runs: list[tuple[float, float | None]] = []

    async def __call__(self) -> None:
        started = trio.current_time()
        self.runs.append((started, None))
        try:
            await trio.sleep_forever()
        finally:
            self.runs[-1] = (started, trio.current_time())


def ownership(lease: FakeLease, events: list[str], standby: list[float] | None = None) -> Ownership:
    return Ownership(lease, event="test.lease", fields={"account": "x"}, count=events.append,
                     on_standby=lambda: standby.append(trio.current_time()) if standby is not None else None)


def times(lease: FakeLease, name: str) -> list[float]:
    return [at for call, at in lease.calls if call == name]


async def test_renews_every_third_of_the_ttl_while_working(autojump_clock):
    lease, events, work = FakeLease(ttl=3.0), [], Work()
    keeper = ownership(lease, events)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run, work)
        await trio.sleep(10.5)
        assert keeper.token == 1
        nursery.cancel_scope.cancel()
    assert times(lease, "acquire") == [0.0]
    assert times(lease, "renew") == pytest.approx([1.0 * n for n in range(1, 11)])
    assert events == ["acquired"] and work.runs[0][0] == 0.0


async def test_stops_working_before_the_lease_can_expire_when_redis_is_gone(autojump_clock):
    lease, events, work = FakeLease(ttl=3.0), [], Work()
    keeper = ownership(lease, events)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run, work)
        await trio.sleep(1.5)
        lease.failing = True            # the renewal at t=2 and every later call fail
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    # Trusted until the last confirmed send (t=1) + ttl · 0.9: stopped at t=3.7, never later.
    assert work.runs[0] == (0.0, pytest.approx(3.7))
    assert events == ["acquired", "expired"]
    assert keeper.token is None and lease.value is None


async def test_a_lost_renewal_stops_the_work_at_once_and_it_waits_to_take_over_again(autojump_clock):
    lease, events, work, standby = FakeLease(ttl=3.0), [], Work(), []
    keeper = ownership(lease, events, standby)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run, work)
        await trio.sleep(0.5)
        lease.renew_answer = False      # another daemon holds it now (it expired during a pause)
        lease.held_by_other_for = 2.0
        await trio.sleep(1.0)
        assert work.runs == [(0.0, 1.0)]       # stopped at the renewal that found it gone
        assert events == ["acquired", "lost"]
        lease.held_by_other_for = None  # the other owner stops: the standby takes it at its next look
        lease.renew_answer = True
        await trio.sleep(2.0)
        nursery.cancel_scope.cancel()
    assert standby[0] == 1.0            # at once, behind the other owner
    assert times(lease, "acquire") == pytest.approx([0.0, 1.0, 2.0])   # it looks again after ttl/3
    assert [start for start, _ in work.runs] == [0.0, pytest.approx(2.0)]
    assert events == ["acquired", "lost", "acquired"] and keeper.token == 2


async def test_a_lease_of_an_earlier_life_of_this_daemon_is_taken_back_at_once(autojump_clock, caplog):
    lease, events, work, standby = FakeLease(ttl=30.0), [], Work(), []
    lease.held_by_earlier_life = "node/0123456789ab|7"      # killed a moment ago: 30 s of lease left
    keeper = ownership(lease, events, standby)
    with caplog.at_level("WARNING", logger="inboundd.ingress.ownership"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keeper.run, work)
            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    assert work.runs[0][0] == 0.0 and standby == []       # no standby: working at once
    assert lease.take_over_asked == [True]
    assert events == ["acquired", "taken_over"] and keeper.token == 1
    [record] = [r for r in caplog.records if r.getMessage() == "test.lease.taken_over"]
    assert record.event_fields["holder"] == "node/0123456789ab|7" and record.event_fields["account"] == "x"


async def test_a_standby_wakes_just_after_the_holders_lease_can_expire(autojump_clock):
    lease, events, work, standby = FakeLease(ttl=30.0), [], Work(), []
    lease.held_by_other_for = 0.5
    keeper = ownership(lease, events, standby)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run, work)
        await trio.sleep(0.3)
        lease.held_by_other_for = None
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    second = times(lease, "acquire")[1]
    assert 0.51 <= second <= 0.56       # held_for + 10 ms + up to 50 ms of jitter
    assert work.runs[0][0] == pytest.approx(second) and events == ["acquired"]


async def test_a_long_held_lease_is_looked_at_again_within_the_standby_bound(autojump_clock):
    lease, events, work = FakeLease(ttl=60.0), [], Work()
    lease.held_by_other_for = 50.0
    keeper = ownership(lease, events)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run, work)
        await trio.sleep(12)
        nursery.cancel_scope.cancel()
    acquires = times(lease, "acquire")
    assert acquires[:3] == pytest.approx([0.0, STANDBY_MAX_WAIT, 2 * STANDBY_MAX_WAIT])
    assert work.runs == []


async def test_redis_down_at_acquire_backs_off_and_reports_the_error(autojump_clock):
    lease, errors = FakeLease(ttl=3.0), []
    lease.failing = True
    keeper = Ownership(lease, event="test.lease", fields={}, on_error=errors.append)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run, Work())
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(times(lease, "acquire"), times(lease, "acquire")[1:])]
    # Equal jitter over 0.5 · 2^n, capped at the standby bound: never a hot loop, never over the bound.
    assert all(0.25 <= gap <= STANDBY_MAX_WAIT for gap in gaps) and max(gaps) > 2.5
    assert errors and errors[0] == "lease: ConnectionError: redis down"


async def test_confirm_stops_a_paused_owner_before_it_writes(autojump_clock):
    lease, events = FakeLease(ttl=3.0), []
    keeper = ownership(lease, events)
    writes: list[str] = []

    async def work() -> None:
        await keeper.confirm()
        writes.append("first")
        lease.owner_answer = False      # the lease moved on while we were paused
        lease.held_by_other_for = 100.0
        await keeper.confirm()
        writes.append("second")         # must never happen

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run, work)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert writes == ["first"] and events == ["acquired", "lost"]


async def test_release_only_when_held(autojump_clock):
    lease, events = FakeLease(ttl=3.0), []
    keeper = ownership(lease, events)
    await keeper.release()
    assert times(lease, "release") == [] and events == []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run, Work())
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    await keeper.release()
    assert len(times(lease, "release")) == 1 and events == ["acquired", "released"]
