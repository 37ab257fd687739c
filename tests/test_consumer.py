"""The consumer pool against a real redis-server: the operator's stories.

Workers that die are real processes killed with SIGKILL or exiting mid-job;
everything else runs in-process with short leases and backoffs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import trio

from inboundd import jobs, metrics
from inboundd.config import QueueConfig, RedisConfig, load_text
from inboundd.consumer import ConsumerPool
from inboundd.jobs import Job
from inboundd.outcomes import DependencyDown, Outcome, PermanentError, TransientError
from inboundd.queue import Queue, ReclaimTimer
from inboundd.redisio import RedisIO

from imap_helpers import BlackHoleProxy
from fakes import QUEUE_PREFIX, RecordingHandler, imap_job, make_queue, metric_value
from waiting import eventually

REPO = Path(__file__).resolve().parent.parent
CFG = QueueConfig(lease=0.5, max_attempts=3, backoff_base=0.01, backoff_cap=0.05, block=0.1, claim_batch=5,
                  reclaim_interval=0.05)


async def settled(queue: Queue) -> bool:
    s = await queue.stats()
    return s.ready == s.in_flight == s.delayed == 0


# --------------------------------------------------------------------------- order and outcomes


async def test_a_single_consumer_handles_jobs_in_enqueue_order_and_a_retry_does_not_jump_ahead(rio: RedisIO) -> None:
    queue = make_queue(rio, CFG, claim_batch=3)
    sent = [imap_job(uid) for uid in range(10)]

    async def fail_first_time_for_uid_0(job: Job, nth: int) -> Outcome:
        if job.pointer.uid == 0 and nth == 1:  # type: ignore[union-attr]
            raise ValueError("flaky")
        return Outcome("processed")

    handler = RecordingHandler(fail_first_time_for_uid_0)
    await queue.enqueue_many(sent)
    async with trio.open_nursery() as nursery:
        await nursery.start(ReclaimTimer(queue, queue.cfg, consumer="r").run)
        await nursery.start(ConsumerPool(queue, handler, queue.cfg, "solo", count=1).run)
        await eventually(lambda: len(handler.calls) == 11 and settled(queue), 10, "all jobs to be handled")
        nursery.cancel_scope.cancel()
    assert handler.uids() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert handler.calls[-1].attempt == 1


async def test_a_failing_job_is_retried_with_backoff_then_dead_lettered_with_its_last_error(rio: RedisIO) -> None:
    queue = make_queue(rio, CFG)
    retried_before = metric_value(metrics.jobs_retried, "imap", "support", "error")

    async def always_fail(job: Job, nth: int) -> Outcome:
        raise ValueError(f"cannot parse, try {nth}")

    handler = RecordingHandler(always_fail)
    job = imap_job(1)
    await queue.enqueue(job)
    async with trio.open_nursery() as nursery:
        await nursery.start(ReclaimTimer(queue, queue.cfg, consumer="r").run)
        await nursery.start(ConsumerPool(queue, handler, queue.cfg, "i", count=2).run)
        letters = await eventually(queue.dead_letters, 10, "the job to be dead-lettered")
        nursery.cancel_scope.cancel()
    assert [j.attempt for j in handler.calls] == [0, 1, 2]
    (letter,) = letters
    assert (letter.job_id, letter.reason, letter.attempts) == (job.id, "max_attempts", 3)
    assert letter.last_error == "ValueError: cannot parse, try 3"
    assert metric_value(metrics.jobs_retried, "imap", "support", "error") - retried_before == 2
    assert await settled(queue)


async def test_transient_errors_back_off_without_burning_attempts(rio: RedisIO) -> None:
    queue = make_queue(rio, CFG)  # max_attempts = 3

    async def db_down_five_times(job: Job, nth: int) -> Outcome:
        if nth <= 5:
            raise TransientError("PostgreSQL unreachable")
        return Outcome("processed")

    handler = RecordingHandler(db_down_five_times)
    await queue.enqueue(imap_job(1))
    async with trio.open_nursery() as nursery:
        await nursery.start(ReclaimTimer(queue, queue.cfg, consumer="r").run)
        await nursery.start(ConsumerPool(queue, handler, queue.cfg, "i", count=1).run)
        await eventually(lambda: len(handler.calls) == 6 and settled(queue), 10, "the job to succeed")
        nursery.cancel_scope.cancel()
    assert [(j.attempt, j.transient) for j in handler.calls] == [(0, n) for n in range(6)]
    assert await queue.dead_letters() == []


class Dependency:
    """A dependency the test takes down and brings back; ``wait_up`` is what DependencyDown hands the consumer."""

    def __init__(self) -> None:
        self.up = trio.Event()
        self.waits = 0

    async def wait_up(self) -> None:
        self.waits += 1
        await self.up.wait()

    def down(self) -> DependencyDown:
        return DependencyDown("PostgreSQL is not answering", dependency="postgres", wait_up=self.wait_up)

    def handler(self) -> RecordingHandler:
        """A handler whose jobs fail with DependencyDown until the dependency is up."""

        async def while_down(job: Job, nth: int) -> Outcome:
            if not self.up.is_set():
                raise self.down()
            return Outcome("processed")

        return RecordingHandler(while_down)


async def test_a_job_whose_dependency_is_down_is_kept_and_run_again_once_it_answers(rio: RedisIO) -> None:
    queue = make_queue(rio, CFG)  # max_attempts = 3
    postgres = Dependency()
    waits_before = metric_value(metrics.dependency_waits, "postgres")
    handler = postgres.handler()
    await queue.enqueue(imap_job(1))
    async with trio.open_nursery() as nursery:
        await nursery.start(ReclaimTimer(queue, queue.cfg, consumer="r").run)
        await nursery.start(ConsumerPool(queue, handler, queue.cfg, "i", count=1).run)
        await eventually(lambda: postgres.waits == 1, 10, "the consumer to wait for the dependency")
        # Held through several leases (the heartbeat renews it), never retried through the queue.
        await trio.sleep(3 * queue.cfg.lease)
        stats = await queue.stats()
        assert (stats.in_flight, stats.delayed, len(handler.calls)) == (1, 0, 1)
        postgres.up.set()
        await eventually(lambda: len(handler.calls) == 2 and settled(queue), 10, "the job to run again")
        nursery.cancel_scope.cancel()
    assert [(j.attempt, j.transient) for j in handler.calls] == [(0, 0), (0, 0)]  # no attempt spent
    assert metric_value(metrics.dependency_waits, "postgres") - waits_before == 1
    assert await queue.dead_letters() == []


async def test_a_drain_hands_back_a_job_waiting_for_its_dependency(rio: RedisIO) -> None:
    queue = make_queue(rio, CFG)
    postgres = Dependency()
    handler = postgres.handler()
    pool = ConsumerPool(queue, handler, queue.cfg, "i", count=1)
    await queue.enqueue(imap_job(1))
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        await eventually(lambda: postgres.waits == 1, 10, "the consumer to wait for the dependency")
        pool.drain()
        with trio.fail_after(5):
            await pool.wait_drained()   # not held until PostgreSQL is back
        stats = await queue.stats()
        assert (stats.ready, stats.in_flight) == (1, 0)
        postgres.up.set()
        pool.resume()
        await eventually(lambda: len(handler.calls) == 2 and settled(queue), 10, "the handed-back job")
        nursery.cancel_scope.cancel()
    assert [j.attempt for j in handler.calls] == [0, 0]


class BatchHandler(RecordingHandler):
    """A handler with ``handle_batch``: one result per job, decided by *results* (uid → outcome or exception)."""

    def __init__(self, results: dict[int, Any], dependency: "Dependency") -> None:
        super().__init__()
        self.results = results
        self.dependency = dependency
        self.batches: list[list[int]] = []

    async def handle_batch(self, jobs: list[Job]) -> list[Any]:
        self.batches.append([j.pointer.uid for j in jobs])  # type: ignore[union-attr]
        out = []
        for job in jobs:
            result = self.results.get(job.pointer.uid, Outcome("processed"))  # type: ignore[union-attr]
            out.append(self.dependency.down() if result == "down" else result)
        return out


async def test_a_batch_handler_gets_the_claimed_jobs_at_once_and_each_result_is_acted_on(rio: RedisIO,
                                                                                       client: redis.Redis) -> None:
    queue = make_queue(rio, CFG)  # claim_batch 5
    dependency = Dependency()
    dependency.up.set()  # DependencyDown is returned once by the batch; the job then runs alone and succeeds
    handler = BatchHandler({2: TransientError("try later"), 3: PermanentError("no_source", "no IMAP source"),
                            4: "down"}, dependency)
    await queue.enqueue_many([imap_job(uid) for uid in range(1, 6)])
    acked_before = metric_value(metrics.jobs_acked, "imap", "support")
    async with trio.open_nursery() as nursery:
        await nursery.start(ConsumerPool(queue, handler, queue.cfg, "b", count=1).run)
        await eventually(lambda: queue.dead_letters(), 10, "the permanent error to be dead-lettered")
        await eventually(lambda: client.zcard(queue.keys.delayed) == 1, 10, "the transient error's retry")
        await eventually(lambda: metric_value(metrics.jobs_acked, "imap", "support") - acked_before == 3, 10,
                         "jobs 1, 4 and 5 acked")
        nursery.cancel_scope.cancel()
    assert handler.batches[0] == [1, 2, 3, 4, 5]
    assert handler.uids()[:1] == [4]  # the job whose dependency was down ran again on its own
    [letter] = await queue.dead_letters()
    assert (letter.reason, letter.attempts) == ("no_source", 1)
    assert (await queue.stats()).in_flight == 0


async def test_permanent_errors_and_invalid_payloads_are_dead_lettered_at_once(rio: RedisIO,
                                                                             client: redis.Redis) -> None:
    queue = make_queue(rio, CFG)

    async def gone(job: Job, nth: int) -> Outcome:
        if job.pointer.uid == 1:  # type: ignore[union-attr]
            raise PermanentError("source_gone", "UIDVALIDITY changed")
        return Outcome("processed")

    handler = RecordingHandler(gone)
    await queue.ensure_group()
    await queue.enqueue(imap_job(1))
    corrupt = b'{"id":"j","tenant":"t","enqueued_at":0,"raw":"From: a\\r\\n"}'
    client.xadd(queue.keys.stream, {"job": corrupt})
    client.xadd(queue.keys.stream, {"something": "else"})
    not_utf8 = b'{"id":"j\xff","tenant":"t"}'  # msgspec raised UnicodeDecodeError: the consumer died on it
    client.xadd(queue.keys.stream, {"job": not_utf8})
    await queue.enqueue(imap_job(2))
    async with trio.open_nursery() as nursery:
        await nursery.start(ConsumerPool(queue, handler, queue.cfg, "i", count=1).run)
        await eventually(lambda: len(handler.calls) == 2 and settled(queue), 10, "the stream to be consumed")
        nursery.cancel_scope.cancel()
    assert handler.uids() == [1, 2]  # the consumer survived the corrupt entries
    letters = await queue.dead_letters()
    assert [(d.reason, d.raw, d.attempts) for d in letters] == [
        ("source_gone", jobs.encode(handler.calls[0]), 1), ("invalid_payload", corrupt, 0), ("invalid_payload", b"", 0),
        ("invalid_payload", not_utf8, 0)]
    assert "UIDVALIDITY changed" in letters[0].last_error and "raw" in letters[1].last_error
    assert "not UTF-8" in letters[3].last_error


# --------------------------------------------------------------------------- leases


async def test_a_long_job_keeps_its_lease_by_heartbeat(rio: RedisIO) -> None:
    queue = make_queue(rio, CFG)  # lease 0.5 s, reclaim every 50 ms
    reclaimed_before = metric_value(metrics.jobs_reclaimed)

    async def slow(job: Job, nth: int) -> Outcome:
        await trio.sleep(4 * queue.cfg.lease)
        return Outcome("processed")

    handler = RecordingHandler(slow)
    await queue.enqueue(imap_job(1))
    async with trio.open_nursery() as nursery:
        await nursery.start(ReclaimTimer(queue, queue.cfg, consumer="r").run)
        await nursery.start(ConsumerPool(queue, handler, queue.cfg, "i", count=2).run)
        await eventually(lambda: len(handler.calls) >= 1 and settled(queue), 10, "the slow job to finish")
        nursery.cancel_scope.cancel()
    assert len(handler.calls) == 1
    assert metric_value(metrics.jobs_reclaimed) == reclaimed_before


async def test_a_restarted_consumer_takes_back_what_it_held(rio: RedisIO, client: redis.Redis) -> None:
    queue = make_queue(rio, CFG)
    hang = RecordingHandler(lambda job, nth: trio.sleep_forever())  # type: ignore[arg-type,return-value]
    await queue.enqueue_many([imap_job(1), imap_job(2)])
    async with trio.open_nursery() as nursery:
        await nursery.start(ConsumerPool(queue, hang, queue.cfg, "host-a", count=1).run)
        await eventually(lambda: hang.calls, 10, "the first job to start")
        nursery.cancel_scope.cancel()  # the daemon is stopped hard mid-job
    assert (await queue.stats()).in_flight_by_consumer == {"host-a-c0": 2}
    handler = RecordingHandler()
    async with trio.open_nursery() as nursery:  # same instance id, no reclaim timer: take-back does it
        await nursery.start(ConsumerPool(queue, handler, queue.cfg, "host-a", count=1).run)
        await eventually(lambda: len(handler.calls) == 2 and settled(queue), 10, "the jobs to be handled again")
        nursery.cancel_scope.cancel()
    assert [(j.pointer.uid, j.attempt) for j in handler.calls] == [(1, 1), (2, 1)]  # type: ignore[union-attr]


# --------------------------------------------------------------------------- dead processes

WORKER = """
import os, sys, trio
from inboundd.config import QueueConfig, RedisConfig
from inboundd.consumer import ConsumerPool
from inboundd.outcomes import Outcome
from inboundd.queue import Queue
from inboundd.redisio import RedisIO

url, instance, marker, mode = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
lease, prefix = float(sys.argv[5]), sys.argv[6]

class Handler:
    async def handle(self, job):
        with open(marker, "a") as f:
            f.write(f"{job.id} {job.attempt}\\n")
        if mode == "crash":
            os._exit(3)
        await trio.sleep_forever()

async def main():
    cfg = QueueConfig(lease=lease, max_attempts=3, block=0.1, claim_batch=5)
    queue = Queue(RedisIO.from_config(RedisConfig(url=url)), cfg, prefix=prefix)
    async with trio.open_nursery() as nursery:
        await nursery.start(ConsumerPool(queue, Handler(), cfg, instance, count=1).run)

trio.run(main)
"""


def spawn_worker(redis_url: str, instance: str, marker: Path, mode: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", WORKER, redis_url, instance, str(marker), mode, str(CFG.lease),
                             QUEUE_PREFIX],
                            env=env, start_new_session=True)


def marker_lines(marker: Path) -> list[str]:
    return marker.read_text().splitlines() if marker.exists() else []


async def test_a_worker_killed_mid_job_loses_nothing(rio: RedisIO, redis_url: str, tmp_path: Path) -> None:
    queue = make_queue(rio, CFG)
    sent = [imap_job(uid) for uid in range(10)]
    await queue.ensure_group()
    await queue.enqueue_many(sent)
    marker = tmp_path / "started"
    worker = spawn_worker(redis_url, "doomed", marker, "hang")
    try:
        await eventually(lambda: marker_lines(marker), 30, "the worker to start a job")
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    held = (await queue.stats()).in_flight_by_consumer
    assert held == {"doomed-c0": 5}  # it died holding its whole claimed batch

    handler = RecordingHandler()
    async with trio.open_nursery() as nursery:
        await nursery.start(ReclaimTimer(queue, queue.cfg, consumer="survivor-reclaim").run)
        await nursery.start(ConsumerPool(queue, handler, queue.cfg, "survivor", count=2).run)
        await eventually(lambda: len(handler.calls) >= 10 and settled(queue), 20, "every job to be handled")
        nursery.cancel_scope.cancel()
    assert sorted(j.id for j in handler.calls) == sorted(j.id for j in sent)  # each exactly once, none lost
    assert {j.pointer.uid for j in handler.calls if j.attempt == 1} == {0, 1, 2, 3, 4}  # type: ignore[union-attr]


async def test_a_job_that_crashes_its_worker_every_time_ends_as_worker_lost(rio: RedisIO, redis_url: str,
                                                                          tmp_path: Path) -> None:
    queue = make_queue(rio, CFG)  # max_attempts = 3
    pill = imap_job(666)
    await queue.ensure_group()
    await queue.enqueue(pill)
    marker = tmp_path / "deliveries"
    async with trio.open_nursery() as nursery:
        await nursery.start(ReclaimTimer(queue, queue.cfg, consumer="r").run)
        for n in range(6):
            worker = spawn_worker(redis_url, f"w{n}", marker, "crash")
            try:
                await eventually(lambda: worker.poll() is not None or queue.dead_letters(), 30,
                                 "the worker to crash or the pill to be dead-lettered")
            finally:
                if worker.poll() is None:
                    os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
            if await queue.dead_letters():
                break
            assert worker.returncode == 3  # it crashed on the pill
        else:
            pytest.fail("the poison pill was never dead-lettered")
        nursery.cancel_scope.cancel()
    assert marker_lines(marker) == [f"{pill.id} {n}" for n in range(3)]  # max_attempts deliveries, no more
    (letter,) = await queue.dead_letters()
    assert (letter.job_id, letter.reason, letter.attempts) == (pill.id, "worker_lost", 3)
    assert await settled(queue)


# --------------------------------------------------------------------------- drain, resize


async def test_drain_finishes_in_flight_jobs_and_claims_nothing_new(rio: RedisIO) -> None:
    queue = make_queue(rio, CFG)
    release = trio.Event()

    async def wait_for_release(job: Job, nth: int) -> Outcome:
        await release.wait()
        return Outcome("processed")

    handler = RecordingHandler(wait_for_release)
    pool = ConsumerPool(queue, handler, queue.cfg, "i", count=2)
    await queue.enqueue(imap_job(1))
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        await eventually(lambda: handler.calls, 10, "the job to start")
        pool.drain()
        drained = trio.Event()

        async def waiter() -> None:
            await pool.wait_drained()
            drained.set()

        nursery.start_soon(waiter)
        await eventually(lambda: not any(c.claiming for c in pool._consumers.values()), 5, "claims to stop")
        assert pool.busy == 1 and not drained.is_set()  # the in-flight job holds the drain
        release.set()
        with trio.fail_after(5):
            await drained.wait()
        assert pool.busy == 0 and (await queue.stats()).in_flight == 0
        await queue.enqueue(imap_job(2))
        await trio.sleep(5 * queue.cfg.block)  # a window of several claim rounds: nothing is claimed
        assert handler.uids() == [1] and (await queue.stats()).ready == 1
        pool.resume()
        await eventually(lambda: handler.uids() == [1, 2], 10, "the pool to claim again")
        nursery.cancel_scope.cancel()


async def test_drain_hands_back_the_rest_of_a_claimed_batch_at_once(rio: RedisIO) -> None:
    queue = make_queue(rio, CFG)
    release = trio.Event()

    async def first_waits(job: Job, nth: int) -> Outcome:
        if job.pointer.uid == 1:  # type: ignore[union-attr]
            await release.wait()
        return Outcome("processed")

    handler = RecordingHandler(first_waits)
    pool = ConsumerPool(queue, handler, queue.cfg, "i", count=1)
    await queue.enqueue_many([imap_job(uid) for uid in range(1, 6)])
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        await eventually(lambda: handler.calls, 10, "the first job to start")
        assert (await queue.stats()).in_flight == 5  # one claim took the whole batch (claim_batch = 5)
        pool.drain()
        release.set()
        with trio.fail_after(5):
            await pool.wait_drained()
        stats = await queue.stats()
        # Back in the stream at once, not pending under a stopped consumer until the lease ends.
        assert (stats.ready, stats.in_flight) == (4, 0)
        assert handler.uids() == [1]
        pool.resume()
        await eventually(lambda: handler.uids() == [1, 2, 3, 4, 5], 10, "the handed-back jobs")
        assert all(job.attempt == 0 for job in handler.calls)  # handing back costs no attempt
        nursery.cancel_scope.cancel()


async def test_resize_changes_the_number_of_consumers(rio: RedisIO) -> None:
    cfg = load_text('[queue]\nlease = "1s"\nbackoff_base = "10ms"\nblock = "100ms"\n').queue
    queue = make_queue(rio, cfg)
    pool = ConsumerPool(queue, RecordingHandler(), cfg, "i", count=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        assert pool.consumer_names() == ["i-c0"]
        pool.resize(3)
        await eventually(lambda: pool.consumer_names() == ["i-c0", "i-c1", "i-c2"], 5, "three consumers")
        pool.resize(1)
        await eventually(lambda: pool.consumer_names() == ["i-c0"], 5, "one consumer")
        assert pool.count == 1
        handler = pool.handler
        await queue.enqueue(imap_job(7))
        await eventually(lambda: handler.uids() == [7], 5, "the remaining consumer to work")  # type: ignore[attr-defined]
        nursery.cancel_scope.cancel()


async def test_an_entry_a_timed_out_claim_took_all_the_same_is_taken_back_at_once(redis_server: Any, redis_url: str,
                                                                                 client: redis.Redis) -> None:
    """Redis stops answering (a frozen path) while a consumer claims. Its call times out, but the claim it
    sent was only held up on the way: Redis carries it out later and delivers an entry into the consumer's
    pending list, and the answer goes nowhere. (The chaos suite's frozen Redis showed it: 16 messages then
    waited 35 s for the reclaim timer.) The consumer takes such entries back at once, no attempt counted."""
    cfg = msgspec.structs.replace(CFG, lease=30.0)   # no reclaim timer runs either: only the consumer can help
    handler = RecordingHandler()
    async with trio.open_nursery() as nursery:
        proxy = BlackHoleProxy(redis_server.port)
        await nursery.start(proxy.run)
        io = RedisIO.from_config(RedisConfig(url=redis_url.replace(f":{redis_server.port}/", f":{proxy.port}/"),
                                             socket_timeout=0.3))
        queue = make_queue(io, cfg)
        await queue.ensure_group()
        await nursery.start(ConsumerPool(queue, handler, cfg, "i", count=1).run)
        proxy.freeze()
        await eventually(lambda: io.outage.down, 10, "the consumer's claim to time out")
        client.xadd(queue.keys.stream, {"job": jobs.encode(imap_job(1))})
        # What Redis does when the held-up claim finally arrives: the entry is delivered to the consumer.
        assert client.xreadgroup("inboundd", "i-c0", {queue.keys.stream: ">"}, count=5)
        proxy.resume()
        await eventually(lambda: handler.uids() == [1], 5, "the stranded entry to be handled")
        await eventually(lambda: settled(queue), 5, "the queue to settle")
        nursery.cancel_scope.cancel()
    await io.close()
    assert [job.attempt for job in handler.calls] == [0]   # never received: no attempt counted


async def test_consumers_start_without_redis_and_work_once_it_is_back(make_redis: Any) -> None:
    server = make_redis()
    server.stop()
    io = RedisIO.from_config(RedisConfig(url=server.url, socket_timeout=0.5))
    queue = make_queue(io, CFG)
    handler = RecordingHandler()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):  # every task reports started although Redis is down
            await nursery.start(queue.run)
            await nursery.start(ReclaimTimer(queue, queue.cfg, consumer="r").run)
            await nursery.start(ConsumerPool(queue, handler, queue.cfg, "i", count=2).run)
        with pytest.raises(redis.RedisError):
            await queue.enqueue(imap_job(1))
        server.start()  # returns once it answers PING
        await queue.enqueue(imap_job(2))
        await eventually(lambda: handler.uids() == [2], 15, "the consumers to claim once Redis is back")
        nursery.cancel_scope.cancel()
    await io.close()
