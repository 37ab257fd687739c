#!/usr/bin/env python3
"""bench/deliver — deliveries/s from the outbox to a loopback webhook receiver answering 204 (goal ≥ 1,000/s).

A private PostgreSQL (tests/services.py, fsync off like the test bed) gets
``--messages`` stored messages (the bench/processing.py corpus, ~10 KB, one
in five with an attachment inlined in the payload), each owing one webhook
delivery, stored through the real store transaction. The receiver is a
separate process (asyncio, HTTP/1.1 keep-alive, reads each request and
answers ``204 No Content``), so it does not share the deliverer's event
loop. The real :class:`~inboundd.deliver.deliverer.Deliverer` then runs
until every row is recorded delivered: claim (SKIP LOCKED, lease), payload
JSON, Standard Webhooks signature, POST with httpx, batched record.

The machine has 2 cores for PostgreSQL, the receiver and the deliverer.

Usage::

    .venv/bin/python bench/deliver.py                       # concurrency 4,8,16; 5000 deliveries
    .venv/bin/python bench/deliver.py --concurrency 16 --messages 10000
"""

from __future__ import annotations

import sys
from pathlib import Path

# This directory holds scripts named like modules (imap.py, processing.py): never import from it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import trio  # noqa: E402

from inboundd import log  # noqa: E402
from inboundd.config import PostgresConfig  # noqa: E402
from inboundd.deliver.deliverer import Deliverer  # noqa: E402
from inboundd.store.db import Database  # noqa: E402
from inboundd.store.migrate import migrate  # noqa: E402
from deliver_helpers import store_messages, webhook_target  # noqa: E402
from services import PostgresServer, free_port  # noqa: E402

RECEIVER = r"""
import asyncio, sys
ANSWER = b"HTTP/1.1 204 No Content\r\n\r\n"

class Receiver(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data):
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            self.transport.write(ANSWER)

async def main():
    server = await asyncio.get_running_loop().create_server(Receiver, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


def load_corpus(count: int) -> list[bytes]:
    """The processing bench's generated corpus (imported by path: this directory is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_processing", ROOT / "bench" / "processing.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate(count)


async def run_once(dsn: str, url: str, corpus: list[bytes], concurrency: int, run_no: int) -> dict[str, float]:
    db = Database(PostgresConfig(dsn=dsn, pool_min=2, pool_max=8))
    await db.open()
    target = webhook_target(url, target_id=f"bench{run_no}", concurrency=concurrency)
    await db.run(lambda conn: store_messages(conn, corpus, [target], account=f"bench{run_no}"))

    def delivered(conn) -> int:
        return conn.execute("SELECT count(*) FROM inbound_deliveries WHERE target = %s AND status = 'delivered'",
                            (target.id,)).fetchone()[0]

    deliverer = Deliverer(db, [target], f"bench-{run_no}")
    started, cpu_started = time.perf_counter(), time.process_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(deliverer.run)
        while await db.run(delivered) < len(corpus):
            await trio.sleep(0.05)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        nursery.cancel_scope.cancel()
    worker = deliverer.workers.get(target.id)
    failed = worker.failed if worker else 0
    await db.close()
    return {"rate": len(corpus) / elapsed, "elapsed": elapsed, "cpu": cpu / elapsed, "failed": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="4,8,16", help="comma-separated target concurrency values")
    parser.add_argument("--messages", type=int, default=5000, help="deliveries per run")
    args = parser.parse_args()
    log.configure("warning")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    corpus = load_corpus(args.messages)
    server = PostgresServer().start()
    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
        print(f"bench/deliver: {args.messages} webhook deliveries per run, average message "
              f"{sum(map(len, corpus)) // len(corpus)} bytes, receiver answers 204 (separate process), "
              f"{os.cpu_count()} cores")
        for run_no, concurrency in enumerate(int(c) for c in args.concurrency.split(",")):
            dsn = server.create_database(f"bench_deliver_{run_no}_{os.getpid()}")
            trio.run(migrate_db, dsn)
            result = trio.run(run_once, dsn, f"http://127.0.0.1:{port}/inbound", corpus, concurrency, run_no)
            print(f"  concurrency {concurrency:3d}: {result['rate']:7.0f} deliveries/s  "
                  f"({result['elapsed']:.2f}s, deliverer CPU {result['cpu']:.0%} of one core, "
                  f"{result['failed']:.0f} failed attempts)")
    finally:
        receiver.terminate()
        receiver.wait(10)
        server.cleanup()


async def migrate_db(dsn: str) -> None:
    db = Database(PostgresConfig(dsn=dsn, pool_min=1, pool_max=2))
    await db.open()
    try:
        await db.run(migrate)
    finally:
        await db.close()


if __name__ == "__main__":
    main()
