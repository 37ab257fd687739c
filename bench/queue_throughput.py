"""Queue throughput against one private redis-server started here: prints jobs/s.

    .venv/bin/python bench/queue_throughput.py [--jobs 20000] [--consumers 8]

Measures (a) enqueue: one task awaiting each enqueue, and many concurrent
tasks coalesced by the batcher; (b) drain: a backlog consumed by the
consumer pool with a no-op handler (claim → handle → fenced ack+delete);
(c) end to end: producers and consumers running at once; and, for
comparison, (d) the same no-op jobs through rq (``pip install rq``; skipped
with a note when it is missing): enqueue, then SimpleWorkers in burst mode.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running this file puts bench/ first on sys.path, where this file would shadow the stdlib
# module ``queue`` that redis-py and trio import: drop it before importing anything else.
_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:
    sys.path.pop(0)
sys.path[:0] = [str(_HERE.parent), str(_HERE.parent / "tests")]

import argparse  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import redis  # noqa: E402
import trio  # noqa: E402

from inboundd import jobs  # noqa: E402
from inboundd.config import QueueConfig, RedisConfig  # noqa: E402
from inboundd.consumer import ConsumerPool  # noqa: E402
from inboundd.jobs import ImapPointer  # noqa: E402
from inboundd.outcomes import Outcome  # noqa: E402
from inboundd.queue import Queue  # noqa: E402
from inboundd.redisio import RedisIO  # noqa: E402
from services import RedisServer  # noqa: E402

PROCESSED = Outcome("processed")


def make_jobs(n: int) -> list[jobs.Job]:
    return [jobs.new_job(ImapPointer(account="bench", folder="INBOX", uidvalidity=1, uid=i), tenant="t")
            for i in range(n)]


class NoOp:
    def __init__(self) -> None:
        self.done = 0

    async def handle(self, job: jobs.Job) -> Outcome:
        self.done += 1
        return PROCESSED


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>10,.0f} jobs/s  ({n} jobs in {seconds:.2f} s)"


async def wait_drained(queue: Queue, pool: ConsumerPool, handler: NoOp, n: int) -> None:
    while handler.done < n or pool.busy:
        await trio.sleep(0.005)


async def bench_inboundd(url: str, n: int, consumers: int, tasks: int, results: dict[str, float]) -> None:
    client = redis.Redis.from_url(url)
    rio = RedisIO.from_config(RedisConfig(url=url, pool_size=max(64, consumers * 2 + 16)))
    cfg = QueueConfig(claim_batch=100, block=0.1)

    # (a1) one task, one enqueue at a time (a round trip each)
    client.flushall()
    queue = Queue(rio, cfg, prefix="bench")
    single = make_jobs(min(n, 3000))
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        t0 = time.perf_counter()
        for job in single:
            await queue.enqueue(job)
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    results["enqueue, 1 task"] = len(single) / elapsed
    print(f"enqueue, 1 task, awaited one by one     {rate(len(single), elapsed)}")

    # (a2) many concurrent tasks, coalesced into pipelines by the batcher
    client.flushall()
    queue = Queue(rio, cfg, prefix="bench")
    batch = make_jobs(n)
    per_task = n // tasks

    async def producer(chunk: list[jobs.Job]) -> None:
        for job in chunk:
            await queue.enqueue(job)

    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        t0 = time.perf_counter()
        async with trio.open_nursery() as producers:
            for i in range(tasks):
                producers.start_soon(producer, batch[i * per_task:(i + 1) * per_task])
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    total = per_task * tasks
    results[f"enqueue, {tasks} tasks"] = total / elapsed
    print(f"enqueue, {tasks} concurrent tasks         {rate(total, elapsed)}  "
          f"[{queue.enqueue_round_trips} pipelines]")

    # (b) drain a backlog of `total` jobs with the pool and a no-op handler
    handler = NoOp()
    pool = ConsumerPool(queue, handler, cfg, "bench", count=consumers)
    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        await nursery.start(pool.run)
        await wait_drained(queue, pool, handler, total)
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    assert client.xlen(queue.keys.stream) == 0, "the stream should be empty after the drain"
    results["drain"] = total / elapsed
    print(f"drain backlog, {consumers} consumers, no-op      {rate(total, elapsed)}")

    # (c) end to end: producers and consumers at once
    client.flushall()
    queue = Queue(rio, cfg, prefix="bench")
    batch = make_jobs(total)
    handler = NoOp()
    pool = ConsumerPool(queue, handler, cfg, "bench2", count=consumers)
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        await nursery.start(pool.run)
        t0 = time.perf_counter()
        async with trio.open_nursery() as producers:
            for i in range(tasks):
                producers.start_soon(producer, batch[i * per_task:(i + 1) * per_task])
        await wait_drained(queue, pool, handler, total)
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    results["end to end"] = total / elapsed
    print(f"end to end (enqueue→claim→ack), {consumers} cons. {rate(total, elapsed)}")
    await rio.close()
    client.close()


RQ_WORKER = """
import sys, redis
from rq import Queue, SimpleWorker
conn = redis.Redis.from_url(sys.argv[1])
SimpleWorker([Queue("bench", connection=conn)], connection=conn).work(burst=True, logging_level="WARNING")
"""


def bench_rq(url: str, n: int, workers: int, results: dict[str, float]) -> None:
    try:
        import rq
    except ImportError:
        print("rq                                      (not installed: `pip install rq` to compare)")
        return
    client = redis.Redis.from_url(url)
    client.flushall()
    q = rq.Queue("bench", connection=client)
    t0 = time.perf_counter()
    with client.pipeline() as pipe:
        for i in range(n):
            q.enqueue("builtins.abs", i, result_ttl=0, pipeline=pipe)
        pipe.execute()
    elapsed = time.perf_counter() - t0
    results["rq enqueue"] = n / elapsed
    print(f"rq {rq.__version__}: enqueue (pipelined)          {rate(n, elapsed)}")
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", RQ_WORKER, url], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True) for _ in range(workers)]
    for proc in procs:
        proc.wait()
    elapsed = time.perf_counter() - t0
    left = q.count
    results["rq drain"] = (n - left) / elapsed
    print(f"rq {rq.__version__}: drain, {workers} SimpleWorkers     {rate(n - left, elapsed)}"
          f"{'' if not left else f'  [{left} left]'}")
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--consumers", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=200, help="concurrent producer tasks")
    parser.add_argument("--rq-jobs", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            out = subprocess.run([server.binary, "--version"], capture_output=True, text=True).stdout.split()
            print(f"redis-server {out[2] if len(out) > 2 else '?'} (private, no persistence), "
                  f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
            results: dict[str, float] = {}
            trio.run(bench_inboundd, server.url, args.jobs, args.consumers, args.tasks, results)
            bench_rq(server.url, args.rq_jobs, args.consumers, results)
            if "rq drain" in results:
                print(f"ratio inboundd/rq: enqueue {results[f'enqueue, {args.tasks} tasks'] / results['rq enqueue']:.1f}x"
                      f", drain {results['drain'] / results['rq drain']:.1f}x"
                      f", end to end vs rq drain {results['end to end'] / results['rq drain']:.1f}x")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
