#!/usr/bin/env python3
"""bench/processing — messages/s through the Processor: claim → fetch → parse → store.

Against a private PostgreSQL (tests/services.py ``PostgresServer`` on a free
loopback port, fsync off like the test bed), with an in-process source that
serves a generated corpus averaging ~10 KB (plain + HTML bodies, every fifth
message with a PDF-like attachment, some of the shipped tests/corpus shapes
mixed in). For each consumer count, ``--messages`` fresh identities are
handled by that many concurrent trio tasks sharing one Processor, like the
daemon's consumers: each takes ``--batch`` jobs at a time, as a claimed
batch, through ``Processor.handle_batch`` (``--batch 1``: one by one through
``Processor.handle``). Parsing runs in worker processes, as in the daemon
(``--parse-in thread`` for two threads). The queue ack is not part of this
bench (``bench/queue_throughput.py`` covers Redis).

Where the time goes: every stage is timed (wall time summed over tasks, so
with N consumers the stages add up to ~N × elapsed): ledger claim
transaction, fetch, parse, store transaction.

Cost per message, counted: client CPU (this process, every thread), parse
CPU (the worker processes), server CPU (every PostgreSQL process of the
private cluster, from /proc) and SQL statements (``pg_stat_statements``,
BEGIN and COMMIT included), each divided by the messages handled. The goal
(issue 15) is printed beside the rate.

Usage::

    .venv/bin/python bench/processing.py                        # consumers 1,2,4,8; 4000 messages each
    .venv/bin/python bench/processing.py --consumers 8 --messages 5000 --batch 1
"""

from __future__ import annotations

import sys
from pathlib import Path

# This directory holds scripts named like modules (imap.py, processing.py): never import from it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import inspect
import itertools
import os
import random
import shutil
import statistics
import time
from collections import defaultdict
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import trio  # noqa: E402

from inboundd.config import Config, PostgresConfig, ProcessingConfig, StoreConfig  # noqa: E402
from inboundd.jobs import ImapPointer, Job, new_job  # noqa: E402
from inboundd.mime import parse_message  # noqa: E402
from inboundd.outcomes import Outcome  # noqa: E402
try:
    from inboundd.parsing import ProcessParser, ThreadParser  # noqa: E402
except ImportError:  # an older checkout measured for a before/after table: it parses in threads only
    ProcessParser = ThreadParser = None  # type: ignore[assignment,misc]
from inboundd.processing import Processor  # noqa: E402
from inboundd.source import FetchedMessage, SourceRegistry  # noqa: E402
from inboundd.store import ledger  # noqa: E402
from inboundd.store.db import Database  # noqa: E402
from inboundd.store.migrate import migrate  # noqa: E402
from services import PostgresServer  # noqa: E402

#: msg/s goal from issue 15, printed beside each rate.
GOAL = 2000

WORDS = ("order invoice delivery parcel refund account password reset thanks please regards tomorrow "
         "question problem urgent support ticket customer number address change payment card").split()


def _text(rng: random.Random, size: int) -> str:
    out, total = [], 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(12))
        out.append(line)
        total += len(line) + 2
    return "\r\n".join(out)


def generate(count: int, seed: int = 1) -> list[bytes]:
    """~10 KB average: multipart/alternative text+HTML; every 5th with a base64 attachment; corpus shapes mixed in."""
    import base64

    rng = random.Random(seed)
    shipped = [p.read_bytes() for p in sorted((ROOT / "tests" / "corpus").glob("*.eml")) if p.stat().st_size < 64_000]
    corpus = []
    for n in range(count):
        if n % 10 == 9 and shipped:
            raw = shipped[n % len(shipped)]
            # A fresh Message-ID so Message-ID dedupe does not turn them into duplicates.
            corpus.append(b"Message-ID: <bench-corpus-%d@example.com>\r\n" % n + raw)
            continue
        text = _text(rng, rng.randint(1500, 4000))
        html = "<html><body><p>" + text.replace("\r\n", "</p>\r\n<p>") + "</p></body></html>"
        head = (f"From: Customer {n} <c{n}@example.com>\r\nTo: support@example.org\r\nSubject: {rng.choice(WORDS)} {n}\r\n"
                f"Date: Wed, 8 Nov 2023 10:00:00 +0100\r\nMessage-ID: <bench-{n}@example.com>\r\nMIME-Version: 1.0\r\n")
        alt = ('Content-Type: multipart/alternative; boundary="alt"\r\n\r\n--alt\r\n'
               'Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
               + text + '\r\n--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n' + html + "\r\n--alt--\r\n")
        if n % 5 == 0:
            blob = base64.encodebytes(rng.randbytes(rng.randint(8_000, 20_000))).decode().replace("\n", "\r\n")
            body = ('Content-Type: multipart/mixed; boundary="mix"\r\n\r\n--mix\r\n' + alt + "--mix\r\n"
                    'Content-Type: application/pdf; name="doc.pdf"\r\nContent-Disposition: attachment; filename="doc.pdf"\r\n'
                    "Content-Transfer-Encoding: base64\r\n\r\n" + blob + "--mix--\r\n")
        else:
            body = alt
        corpus.append((head + body).encode())
    return corpus


class TimedDatabase(Database):
    """The real pool, timing each transaction by what it runs (claim vs. store)."""

    def __init__(self, *args: Any, stages: dict[str, list[float]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stages = stages

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await super().run(fn, *args, **kwargs)
        finally:
            names = getattr(fn, "__code__", None).co_names
            name = "store txn" if {"commit_message", "commit_batch"} & set(names) else "claim txn"
            self.stages[name].append(time.perf_counter() - started)


class CorpusSource:
    def __init__(self, stages: dict[str, list[float]]) -> None:
        self.raw: dict[str, bytes] = {}
        self.stages = stages

    async def fetch(self, job: Job, max_size: int) -> FetchedMessage:
        started = time.perf_counter()
        raw = self.raw[job.identity()]
        await trio.lowlevel.checkpoint()
        self.stages["fetch"].append(time.perf_counter() - started)
        return FetchedMessage(raw=raw, provider_message_id=job.identity(), folder="INBOX", size=len(raw))

    async def after_commit(self, job: Job, outcome: Outcome) -> None:
        return None


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) used so far by process *root* and its live children."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == root or int(fields[1]) == root:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def children_cpu() -> float:
    """CPU seconds used so far by this process's live children (the parse workers)."""
    return tree_cpu(os.getpid()) - time.process_time()


def server_cpu(server: PostgresServer) -> float:
    """CPU seconds used so far by the cluster's processes that are alive now."""
    return tree_cpu(int((server.data / "postmaster.pid").read_text().split()[0]))


STATEMENTS = ("SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements"
              " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
              " AND query NOT LIKE '%pg_stat_statements%'")


def enable_statement_counts(server: PostgresServer, dsn: str) -> None:
    """Load pg_stat_statements (a restart) and create it in the bench database."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    server.stop()
    server.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


class TimedParser:
    """The real parser, timing each parse as the caller waits for it."""

    def __init__(self, inner: Any, stages: dict[str, list[float]]) -> None:
        self.inner = inner
        self.stages = stages

    async def parse(self, raw: bytes) -> Any:
        started = time.perf_counter()
        try:
            return await self.inner.parse(raw)
        finally:
            self.stages["parse"].append(time.perf_counter() - started)

    async def parse_many(self, raws: Any) -> Any:
        started = time.perf_counter()
        try:
            return await self.inner.parse_many(raws)
        finally:
            self.stages["parse"].append(time.perf_counter() - started)


async def run_once(server: PostgresServer, dsn: str, corpus: list[bytes], consumers: int, run_no: int,
                   keep_raw: bool, parse_in: str, batch: int) -> dict[str, Any]:
    if ThreadParser is None or "parser" not in inspect.signature(Processor).parameters:
        return await _run_once(server, dsn, corpus, consumers, run_no, keep_raw, None, batch)
    if parse_in == "process":
        async with ProcessParser.open() as parser:
            async with trio.open_nursery() as nursery:  # spawn and warm every worker before the clock runs
                for raw in corpus[:parser.workers * 2]:
                    nursery.start_soon(parser.parse, raw)
            return await _run_once(server, dsn, corpus, consumers, run_no, keep_raw, parser, batch)
    return await _run_once(server, dsn, corpus, consumers, run_no, keep_raw, ThreadParser(2), batch)


async def _run_once(server: PostgresServer, dsn: str, corpus: list[bytes], consumers: int, run_no: int,
                    keep_raw: bool, inner_parser: Any, batch: int) -> dict[str, Any]:
    stages: dict[str, list[float]] = defaultdict(list)
    db = TimedDatabase(PostgresConfig(dsn=dsn, pool_min=min(consumers, 16), pool_max=max(2, min(consumers + 2, 32))),
                       stages=stages)
    await db.open()
    source = CorpusSource(stages)
    registry = SourceRegistry()
    registry.register("imap", source)
    cfg = Config(processing=ProcessingConfig(fetch_timeout=60, lease=300), store=StoreConfig(keep_raw=keep_raw))
    if inner_parser is None:
        proc = Processor(db, registry, cfg, "bench")
    else:
        proc = Processor(db, registry, cfg, "bench", parser=TimedParser(inner_parser, stages))
    jobs = []
    for uid, raw in enumerate(corpus, 1):
        job = new_job(ImapPointer(account=f"bench{run_no}", folder="INBOX", uidvalidity=1, uid=uid), tenant="bench")
        source.raw[job.identity()] = raw
        jobs.append(job)
    await db.run(lambda conn: conn.execute("SELECT 1"))  # pool warm
    await db.run(lambda conn: conn.execute("SELECT pg_stat_statements_reset()"))
    stages.clear()
    server_cpu_started = server_cpu(server)
    queue = iter(jobs)
    statuses: dict[str, int] = defaultdict(int)
    latencies: list[float] = []

    together = getattr(proc, "handle_batch", None) if batch > 1 else None

    async def consumer() -> None:
        while chunk := list(itertools.islice(queue, batch)):
            started = time.perf_counter()
            if together is not None:  # as the consumer pool does with a claimed batch
                outcomes = await together(chunk)
            else:
                outcomes = [await proc.handle(job) for job in chunk]
            latencies.extend([time.perf_counter() - started] * len(chunk))
            for outcome in outcomes:
                statuses[getattr(outcome, "status", type(outcome).__name__)] += 1

    started, cpu_started, workers_started = time.perf_counter(), time.process_time(), children_cpu()
    async with trio.open_nursery() as nursery:
        for _ in range(consumers):
            nursery.start_soon(consumer)
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - cpu_started
    workers_cpu = children_cpu() - workers_started
    cpu = client_cpu / elapsed
    server_cpu_used = server_cpu(server) - server_cpu_started
    statements = (await db.run(lambda conn: conn.execute(STATEMENTS).fetchone()))[0]
    stage_totals = {k: (sum(v), statistics.mean(v) * 1000) for k, v in stages.items()}
    counts = await db.run(lambda conn: ledger.counts(conn, account=f"bench{run_no}"))
    await db.close()
    latencies.sort()
    return {
        "consumers": consumers, "elapsed": elapsed, "rate": len(jobs) / elapsed, "cpu": cpu, "statuses": dict(statuses),
        "p50_ms": 1000 * latencies[len(latencies) // 2], "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "stages": stage_totals,
        "client_us": 1e6 * client_cpu / len(jobs), "workers_us": 1e6 * workers_cpu / len(jobs), "server_us": 1e6 * server_cpu_used / len(jobs),
        "statements": statements / len(jobs),
        "ledger": counts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--consumers", default="1,2,4,8", help="comma-separated consumer counts")
    parser.add_argument("--messages", type=int, default=4000, help="messages per run")
    parser.add_argument("--keep-raw", action="store_true", help="also store the raw MIME ([store] keep_raw)")
    parser.add_argument("--parse-in", choices=("process", "thread"), default="process",
                        help="parse in worker processes (the daemon's way) or in two threads")
    parser.add_argument("--batch", type=int, default=32,
                        help="jobs each consumer takes at once, as a claimed batch (the daemon's claim_batch: 32);"
                             " 1 = one by one through Processor.handle")
    args = parser.parse_args()

    corpus = generate(args.messages)
    sizes = [len(r) for r in corpus]
    print(f"corpus: {len(corpus)} messages, mean {statistics.mean(sizes) / 1024:.1f} KB, "
          f"median {statistics.median(sizes) / 1024:.1f} KB, {sum(1 for r in corpus if b'attachment' in r)} with attachments")
    started = time.perf_counter()
    for raw in corpus:
        parse_message(raw)
    pure = len(corpus) / (time.perf_counter() - started)
    print(f"parse only (one thread, no I/O): {pure:.0f} messages/s")

    server = PostgresServer().start()
    try:
        dsn = server.create_database("bench")
        import psycopg

        with psycopg.connect(dsn) as conn:
            migrate(conn)
        enable_statement_counts(server, dsn)
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"parse in: {args.parse_in}; batches of {args.batch}; CPU and statements per message")
        print(f"{'consumers':>9} {'msg/s':>6} {'(goal)':>7} {'p50 ms':>7} {'p99 ms':>7} {'cpu%':>5} {'client µs':>9}"
              f" {'parse µs':>8} {'server µs':>9} {'stmts':>5}   stage: total s (mean ms)")
        for run_no, consumers in enumerate(int(c) for c in args.consumers.split(",")):
            result = trio.run(run_once, server, dsn, corpus, consumers, run_no, args.keep_raw, args.parse_in,
                              args.batch)
            assert result["statuses"] == {"processed": len(corpus)}, result["statuses"]
            assert result["ledger"].get("processed") == len(corpus), result["ledger"]
            stages = "  ".join(f"{name} {total:.2f} ({mean:.2f})" for name, (total, mean) in
                               sorted(result["stages"].items()))
            print(f"{consumers:>9} {result['rate']:>6.0f} {'≥' + str(GOAL):>7} {result['p50_ms']:>7.1f}"
                  f" {result['p99_ms']:>7.1f} {100 * result['cpu']:>5.0f} {result['client_us']:>9.0f} {result['workers_us']:>8.0f}"
                  f" {result['server_us']:>9.0f} {result['statements']:>5.1f}   {stages}", flush=True)
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)
    print(f"cpu count: {os.cpu_count()}")


if __name__ == "__main__":
    main()
