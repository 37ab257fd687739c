"""Queue throughput against one private redis-server: inboundd beside dramatiq and saq, same Redis, same run.

    .venv/bin/python bench/queue_throughput.py [--jobs 40000] [--peer-jobs 8000] [--repeat 3]

Every figure is no-op jobs per second (the job does nothing: what is measured
is the queue), printed beside its goal. Scenarios:

* **enqueue**: 200 tasks each awaiting one ``enqueue`` at a time (the
  batcher coalesces them), and callers that already hold many jobs
  (``enqueue_many`` of 100, like an IMAP catch-up).
* **drain**: a backlog consumed by the consumer pool (claim → no-op →
  fenced ack + delete).
* **end to end, two processes**: a producer process (200 tasks, one
  ``enqueue`` each at a time) and a consumer process (the daemon's consumer
  pool) at once; the clock runs from "go" until the consumer has handled
  the last job. This is the headline figure and the one compared with the
  peers.
* **end to end, one process**: the same in one trio process, the daemon's
  real shape (listeners and consumers together).
* **peers**: dramatiq (Redis broker) and saq on the same Redis, each in the
  same two-process shape (a producer process sending one job at a time, a
  worker process), best of a small concurrency sweep.

CPU per job is reported for the producer, the consumer and redis-server.
The peers need the bench extras (``pip install -e '.[bench]'``); a missing
one is named and left out. The last line is ``ratio=`` — inboundd's two-process
end-to-end figure divided by the best peer's.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running this file puts bench/ first on sys.path, where its modules would shadow the stdlib
# module ``queue`` that redis-py and trio import: drop it before importing anything else.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path[:0] = [str(_HERE.parent), str(_HERE.parent / "tests")]

import argparse  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import redis  # noqa: E402

#: Goals (jobs/s) from issue 15, printed beside each figure.
GOALS = {
    "e2e_two_processes": 30_000,
    "e2e_one_process": 15_000,
    "ratio": 10.0,
}

# --------------------------------------------------------------------------- inboundd, run in child processes

INBOUNDD_CHILD = r'''
import sys, time, resource
sys.path[:0] = [sys.argv[1]]
import trio
from inboundd import jobs
from inboundd.config import QueueConfig, RedisConfig
from inboundd.consumer import ConsumerPool
from inboundd.jobs import ImapPointer
from inboundd.outcomes import Outcome
from inboundd.queue import Queue
from inboundd.redisio import RedisIO

role, url, n, consumers, tasks, chunk = sys.argv[2], sys.argv[3], *map(int, sys.argv[4:8])
PROCESSED = Outcome("processed")


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Counting:
    def __init__(self, n):
        self.n, self.done, self.finished = n, 0, trio.Event()

    async def handle(self, job):
        self.done += 1
        if self.done == self.n:
            self.finished.set()
        return PROCESSED


async def produce(queue, n, tasks, chunk):
    per_task = n // tasks
    made = [jobs.new_job(ImapPointer(account="bench", folder="INBOX", uidvalidity=1, uid=i), tenant="t")
            for i in range(per_task * tasks)]

    async def producer(mine):
        if chunk > 1:
            for start in range(0, len(mine), chunk):
                await queue.enqueue_many(mine[start:start + chunk])
        else:
            for job in mine:
                await queue.enqueue(job)

    async with trio.open_nursery() as nursery:
        for i in range(tasks):
            nursery.start_soon(producer, made[i * per_task:(i + 1) * per_task])


async def main():
    rio = RedisIO.from_config(RedisConfig(url=url, pool_size=max(32, consumers * 2 + 16)))
    cfg = QueueConfig()  # the daemon's defaults (claim_batch 32, block 1 s)
    queue = Queue(rio, cfg, prefix="bench")
    handler = Counting(n)
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        if role in ("consumer", "both"):
            await nursery.start(ConsumerPool(queue, handler, cfg, "bench", count=consumers).run)
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)  # "go"
        cpu0 = cpu()
        if role in ("producer", "both"):
            await produce(queue, n, tasks, chunk)
        if role in ("consumer", "both"):
            await handler.finished.wait()
        print(f"done {time.perf_counter()} {cpu() - cpu0}", flush=True)
        nursery.cancel_scope.cancel()
    await rio.close()

trio.run(main)
'''

# --------------------------------------------------------------------------- peers

DRAMATIQ_WORKER = r'''
import sys, time, threading, itertools, resource, logging
import dramatiq
from dramatiq.brokers.redis import RedisBroker
logging.disable(logging.WARNING)
url, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
broker = RedisBroker(url=url)
dramatiq.set_broker(broker)
count, done = itertools.count(1), threading.Event()
stamp = []

@dramatiq.actor(max_retries=0, queue_name="bench")
def noop(i):
    if next(count) == n:
        stamp.append(time.perf_counter())
        done.set()

worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
worker.start()
print("ready", flush=True)
sys.stdin.readline()
r0 = resource.getrusage(resource.RUSAGE_SELF)
done.wait()
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(f"done {stamp[0]} {r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime}", flush=True)
worker.stop(timeout=1000)
'''

DRAMATIQ_PRODUCER = r'''
import sys, time, resource, logging
import dramatiq
from dramatiq.brokers.redis import RedisBroker
logging.disable(logging.WARNING)
url, n = sys.argv[1], int(sys.argv[2])
dramatiq.set_broker(RedisBroker(url=url))

@dramatiq.actor(max_retries=0, queue_name="bench")
def noop(i):
    pass

print("ready", flush=True)
sys.stdin.readline()
r0 = resource.getrusage(resource.RUSAGE_SELF)
for i in range(n):
    noop.send(i)
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(f"done {time.perf_counter()} {r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime}", flush=True)
'''

SAQ_WORKER = r'''
import sys, time, asyncio, resource, logging
from saq import Queue, Worker
logging.disable(logging.WARNING)
url, n, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
state = {"count": 0}
done = asyncio.Event()

async def noop(ctx, **kwargs):
    state["count"] += 1
    if state["count"] == n:
        state["at"] = time.perf_counter()
        done.set()

async def main():
    queue = Queue.from_url(url, name="bench")
    worker = Worker(queue, functions=[noop], concurrency=concurrency)
    task = asyncio.create_task(worker.start())
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    await done.wait()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(f"done {state['at']} {r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime}", flush=True)
    await worker.stop()
    task.cancel()

asyncio.run(main())
'''

SAQ_PRODUCER = r'''
import sys, time, asyncio, resource, logging
from saq import Queue
logging.disable(logging.WARNING)
url, n, tasks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

async def main():
    queue = Queue.from_url(url, name="bench")
    await queue.connect()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    r0 = resource.getrusage(resource.RUSAGE_SELF)

    async def producer(ids):
        for i in ids:
            await queue.enqueue("noop", i=i)

    await asyncio.gather(*(producer(range(t, n, tasks)) for t in range(tasks)))
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(f"done {time.perf_counter()} {r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime}", flush=True)
    await queue.disconnect()

asyncio.run(main())
'''


# --------------------------------------------------------------------------- orchestration


class Child:
    """A bench process that prints ``ready``, waits for a line on stdin, then prints ``done <t> <cpu>``."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        line = self.proc.stdout.readline().strip()  # type: ignore[union-attr]
        if line != "ready":
            self.proc.kill()
            raise RuntimeError(f"{argv[:3]}: expected 'ready', got {line!r}")

    def go(self) -> None:
        self.proc.stdin.write("go\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def result(self, timeout: float = 300) -> tuple[float, float]:
        line = self.proc.stdout.readline().split()  # type: ignore[union-attr]
        self.proc.wait(timeout)
        if not line or line[0] != "done":
            raise RuntimeError(f"bench child failed (exit {self.proc.returncode}): {line}")
        return float(line[1]), float(line[2])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


class Result:
    def __init__(self, name: str, jobs: int, seconds: float, cpu: dict[str, float], note: str = "") -> None:
        self.name, self.jobs, self.seconds, self.cpu, self.note = name, jobs, seconds, cpu, note

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds


def run_pair(client: redis.Redis, name: str, consumer: list[str] | None, producer: list[str], jobs: int) -> Result:
    """Start the consumer (if any) and the producer, say go to both, time until the consumer's last job."""
    client.flushall()
    children: list[Child] = []
    try:
        worker = Child(consumer) if consumer else None
        if worker:
            children.append(worker)
        prod = Child(producer)
        children.append(prod)
        redis0 = redis_cpu(client)
        started = time.perf_counter()
        for child in children:
            child.go()
        prod_done, prod_cpu = prod.result()
        cpu = {"producer": prod_cpu}
        finished = prod_done
        if worker:
            finished, cpu["consumer"] = worker.result()
        cpu["redis"] = redis_cpu(client) - redis0
        return Result(name, jobs, finished - started, cpu)
    finally:
        for child in children:
            child.kill()


#: The inboundd checkout the child processes import (``--inboundd-root``: measure another one, e.g. main).
ROOT = [str(_HERE.parent)]


def inboundd_argv(role: str, url: str, n: int, consumers: int, tasks: int, chunk: int) -> list[str]:
    return [sys.executable, "-c", INBOUNDD_CHILD, ROOT[0], role, url, str(n), str(consumers), str(tasks), str(chunk)]


def best(results: list[Result]) -> Result:
    return max(results, key=lambda r: r.rate)


def show(result: Result, goal: float | None = None, runs: list[Result] | None = None) -> None:
    cpu = "  ".join(f"{k} {1e6 * v / result.jobs:.1f}" for k, v in result.cpu.items())
    spread = ""
    if runs and len(runs) > 1:
        rates = sorted(r.rate for r in runs)
        spread = f"  [runs {', '.join(f'{r:,.0f}' for r in rates)}; median {statistics.median(rates):,.0f}]"
    goal_text = f"goal ≥ {goal:>8,.0f}" if goal else " " * 15
    print(f"{result.name:<46} {result.rate:>9,.0f} jobs/s  {goal_text}   cpu µs/job: {cpu}{spread}"
          f"{'  ' + result.note if result.note else ''}", flush=True)


def bench_inboundd(client: redis.Redis, url: str, args: argparse.Namespace) -> dict[str, Result]:
    n, out = args.jobs, {}
    scenarios = [
        ("enqueue, 200 tasks × enqueue()", None, inboundd_argv("producer", url, n, 0, 200, 1), None),
        ("enqueue, 20 tasks × enqueue_many(100)", None, inboundd_argv("producer", url, n, 0, 20, 100), None),
        ("end to end, one process", None, inboundd_argv("both", url, n, args.consumers, 200, 1),
         GOALS["e2e_one_process"]),
        ("end to end, two processes", inboundd_argv("consumer", url, n, args.consumers, 0, 0),
         inboundd_argv("producer", url, n, 0, 200, 1), GOALS["e2e_two_processes"]),
    ]
    for name, consumer, producer, goal in scenarios:
        runs = [run_pair(client, f"inboundd: {name}", consumer, producer, n) for _ in range(args.repeat)]
        out[name] = best(runs)
        show(out[name], goal, runs)
    # drain: a backlog written first, then the consumer process alone
    runs = []
    for _ in range(args.repeat):
        client.flushall()
        fill = Child(inboundd_argv("producer", url, n, 0, 20, 100))
        fill.go()
        fill.result()
        consumer = Child(inboundd_argv("consumer", url, n, args.consumers, 0, 0))
        try:
            redis0, started = redis_cpu(client), time.perf_counter()
            consumer.go()
            done, cpu = consumer.result()
            runs.append(Result(f"inboundd: drain backlog, {args.consumers} consumers", n, done - started,
                               {"consumer": cpu, "redis": redis_cpu(client) - redis0}))
        finally:
            consumer.kill()
    out["drain"] = best(runs)
    show(out["drain"], None, runs)
    return out


def bench_peers(client: redis.Redis, url: str, args: argparse.Namespace) -> list[Result]:
    n, found = args.peer_jobs, []
    try:
        import dramatiq

        for threads in (8, 32):
            result = run_pair(client, f"dramatiq {dramatiq.__version__}: worker_threads={threads}",
                              [sys.executable, "-c", DRAMATIQ_WORKER, url, str(n), str(threads)],
                              [sys.executable, "-c", DRAMATIQ_PRODUCER, url, str(n)], n)
            show(result)
            found.append(result)
    except ImportError:
        print("dramatiq: not installed (pip install -e '.[bench]')")
    try:
        import saq

        for concurrency in (10, 50):
            result = run_pair(client, f"saq {getattr(saq, '__version__', '?')}: concurrency={concurrency}",
                              [sys.executable, "-c", SAQ_WORKER, url, str(n), str(concurrency)],
                              [sys.executable, "-c", SAQ_PRODUCER, url, str(n), "50"], n)
            show(result)
            found.append(result)
    except ImportError:
        print("saq: not installed (pip install -e '.[bench]')")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40000, help="jobs per inboundd run")
    parser.add_argument("--peer-jobs", type=int, default=8000, help="jobs per peer run")
    parser.add_argument("--consumers", type=int, default=4, help="consumer tasks (the daemon's default: 4)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per inboundd scenario (best is kept)")
    parser.add_argument("--inboundd-root", default=ROOT[0], help="checkout whose inboundd is measured (before/after)")
    parser.add_argument("--no-peers", action="store_true", help="leave dramatiq and saq out")
    args = parser.parse_args()
    ROOT[0] = str(Path(args.inboundd_root).resolve())
    sys.path.insert(0, str(_HERE.parent / "tests"))
    from services import RedisServer

    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp)).start()
        client = redis.Redis.from_url(server.url)
        try:
            out = subprocess.run([server.binary, "--version"], capture_output=True, text=True).stdout.split()
            print(f"redis-server {out[2] if len(out) > 2 else '?'} (private, no persistence), "
                  f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load average "
                  f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            print(f"inboundd from {ROOT[0]}")
            ours = bench_inboundd(client, server.url, args)
            peers = [] if args.no_peers else bench_peers(client, server.url, args)
            print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            headline = ours["end to end, two processes"]
            if peers:
                top = best(peers)
                print(f"best peer: {top.name} {top.rate:,.0f} jobs/s; inboundd two-process e2e "
                      f"{headline.rate:,.0f} jobs/s; goal ratio ≥ {GOALS['ratio']:g}")
                print(f"ratio={headline.rate / top.rate:.1f}")
            else:
                print("ratio=n/a (no peer installed)")
        finally:
            client.close()
            server.stop()


if __name__ == "__main__":
    main()
