#!/usr/bin/env python3
"""bench/imap — what IMAP ingress costs, measured against a private Dovecot and Redis.

(a) **added latency**: APPEND → pointer job acknowledged by Redis, minus the
    time a bare imapclient in IDLE on the same mailbox sees the EXISTS.
    Dovecot delays IDLE notifications by a fixed 500 ms for every client;
    the difference is what inboundd itself adds (thread hops, DONE, UID
    SEARCH, XADD). p50/p99 over ``--appends`` appends.
(b) **idle cost**: ``--mailboxes`` mailboxes in IDLE on one listener group:
    RSS, thread count and CPU% of this process over 10 s of silence. IDLE
    waits on socket readability in trio, so mailboxes must not cost threads.
(c) **catch-up**: ``--messages`` messages arrive while the listener is down
    (written straight into the Maildir); after restart, time until every
    pointer is enqueued, in jobs/s (Dovecot's indexing of the new files included).

Usage (as root: the private Dovecot's mail tree belongs to nobody)::

    .venv/bin/python bench/imap.py                  # all three, a few minutes
    .venv/bin/python bench/imap.py --only a --appends 400

Nothing is shared with a system Dovecot or Redis: both run on free loopback
ports in a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402
from imapclient import IMAPClient  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))

from inboundd import log  # noqa: E402
from inboundd.config import Secret  # noqa: E402
from inboundd.providers.imap.settings import ImapAccountConfig  # noqa: E402
from inboundd.providers.imap.conn import ImapAccount  # noqa: E402
from inboundd.ingress.cursors import MemoryCursorStore  # noqa: E402
from inboundd.providers.imap.listener import ImapListenerGroup  # noqa: E402
from services import DovecotServer, RedisServer  # noqa: E402

PASSWORD = "bench-secret"


class BenchDovecot(DovecotServer):
    """The test bed's private Dovecot (sized for thousands of IDLE clients), with every mailbox made up front."""

    def __init__(self, base: Path, users: list[str]) -> None:
        super().__init__(base)
        nobody = pwd.getpwnam("nobody")
        self.uid, self.gid = nobody.pw_uid, nobody.pw_gid
        for user in users:
            self.add_user(user, PASSWORD)  # before start: written at once, no login check

    def maildir(self, user: str) -> Path:
        path = self.mail / user / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        for directory in (path.parent, path, path / "cur", path / "new", path / "tmp"):
            os.chown(directory, self.uid, self.gid)
        return path

    def drop_messages(self, user: str, count: int) -> None:
        """Deliver *count* messages by writing Maildir files (what an MDA does; far faster than APPEND)."""
        new = self.maildir(user) / "new"
        stamp = int(time.time())
        for index in range(count):
            body = (f"From: sender{index}@example.org\r\nTo: {user}@example.org\r\n"
                    f"Subject: catch-up {index}\r\nMessage-ID: <catchup-{index}-{stamp}@bench>\r\n"
                    f"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\nmessage {index}\r\n").encode()
            path = new / f"{stamp}.M{index}P{os.getpid()}.bench"
            path.write_bytes(body)
            os.chown(path, self.uid, self.gid)

    def client(self, user: str) -> IMAPClient:
        client = IMAPClient("127.0.0.1", self.port, ssl=False, timeout=30)
        client.login(user, PASSWORD)
        return client

    def account(self, user: str, **overrides: Any) -> ImapAccount:
        fields: dict[str, Any] = dict(id=user, host="127.0.0.1", port=self.port, username=user, tls="none",
                                      reconnect_base=0.2, reconnect_cap=2.0, lease=0)
        fields.update(overrides)
        return ImapAccount(ImapAccountConfig(**fields), Secret(PASSWORD, "bench"))


# --------------------------------------------------------------------------- the queue under test


class TimedQueue:
    """The real queue, noting when each pointer was acknowledged (time.monotonic)."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue
        self.acked: dict[tuple[str, int], float] = {}
        self.count = 0
        self.done = threading.Condition()

    async def enqueue_many(self, jobs: Any) -> Any:
        result = await self.queue.enqueue_many(jobs)
        now = time.monotonic()
        with self.done:
            for job in jobs:
                self.acked[(job.pointer.account, job.pointer.uid)] = now
            self.count += len(jobs)
            self.done.notify_all()
        return result


@asynccontextmanager
async def running_queue(redis_url: str) -> AsyncIterator[Any]:
    """The project's Redis Streams queue on *redis_url*, with its enqueue batcher running (as in the daemon)."""
    from inboundd.config import QueueConfig, RedisConfig
    from inboundd.queue import Queue
    from inboundd.redisio import RedisIO

    rio = RedisIO.from_config(RedisConfig(url=redis_url))
    queue = Queue(rio, QueueConfig(), prefix="bench")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.run)
            yield queue
            nursery.cancel_scope.cancel()
    finally:
        await rio.close()


# --------------------------------------------------------------------------- (a) latency


class BareIdler(threading.Thread):
    """A plain imapclient in IDLE, noting when each EXISTS count arrives."""

    def __init__(self, dovecot: BenchDovecot, user: str) -> None:
        super().__init__(daemon=True)
        self.client = dovecot.client(user)
        self.client.select_folder("INBOX", readonly=True)
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()
        self.cond = threading.Condition()
        self.client.idle()

    def run(self) -> None:
        while not self.stop.is_set():
            for response in self.client.idle_check(timeout=0.2):
                if len(response) >= 2 and response[1] == b"EXISTS":
                    with self.cond:
                        self.seen[int(response[0])] = time.monotonic()
                        self.cond.notify_all()
        self.client.idle_done()
        self.client.logout()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def bench_latency(dovecot: BenchDovecot, redis_url: str, appends: int, mailboxes: int = 2) -> dict[str, Any]:
    users = [f"lat{i}" for i in range(mailboxes)]
    async with running_queue(redis_url) as queue:
        return await _bench_latency(dovecot, queue, users, appends, mailboxes)


async def _bench_latency(dovecot: BenchDovecot, queue: Any, users: list[str], appends: int,
                         mailboxes: int) -> dict[str, Any]:
    timed = TimedQueue(queue)
    group = ImapListenerGroup([dovecot.account(u) for u in users], queue=timed, cursors=MemoryCursorStore())
    added: list[float] = []
    bare_latency: list[float] = []
    ours_latency: list[float] = []

    def appender(user: str, idler: BareIdler, count: int) -> None:
        client = dovecot.client(user)
        for index in range(count):
            message = (f"Subject: latency {index}\r\nMessage-ID: <lat-{user}-{index}-{time.time_ns()}@bench>\r\n"
                       f"\r\nhello\r\n").encode()
            uid = index + 1  # fresh mailbox, no expunges: the n-th message has UID n and sequence n
            t0 = time.monotonic()
            client.append("INBOX", message)
            deadline = t0 + 10
            with idler.cond:
                idler.cond.wait_for(lambda: uid in idler.seen, timeout=deadline - time.monotonic())
            with timed.done:
                timed.done.wait_for(lambda: (user, uid) in timed.acked, timeout=deadline - time.monotonic())
            if uid not in idler.seen or (user, uid) not in timed.acked:
                raise RuntimeError(f"append {index} to {user} not seen within 10 s")
            bare_latency.append(idler.seen[uid] - t0)
            ours_latency.append(timed.acked[(user, uid)] - t0)
            added.append(timed.acked[(user, uid)] - idler.seen[uid])
        client.logout()

    async with trio.open_nursery() as nursery:
        await nursery.start(group.run)
        idlers = [BareIdler(dovecot, u) for u in users]
        for idler in idlers:
            idler.start()
        per_box = -(-appends // mailboxes)
        async with trio.open_nursery() as appenders:
            for user, idler in zip(users, idlers):
                appenders.start_soon(trio.to_thread.run_sync, appender, user, idler, per_box)
        for idler in idlers:
            idler.stop.set()
        nursery.cancel_scope.cancel()
    ms = lambda v: round(v * 1000, 2)  # noqa: E731
    return {
        "appends": len(added),
        "bare_exists_p50_ms": ms(statistics.median(bare_latency)),
        "inboundd_enqueued_p50_ms": ms(statistics.median(ours_latency)),
        "added_p50_ms": ms(statistics.median(added)),
        "added_p99_ms": ms(percentile(added, 99)),
        "added_max_ms": ms(max(added)),
    }


# --------------------------------------------------------------------------- (b) idle cost


def proc_status() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            fields[key] = int(value.split()[0])
    return fields


async def bench_idle(dovecot: BenchDovecot, redis_url: str, mailboxes: int, settle: float, window: float) -> dict[str, Any]:
    async with running_queue(redis_url) as queue:
        return await _bench_idle(dovecot, queue, mailboxes, settle, window)


async def _bench_idle(dovecot: BenchDovecot, queue: Any, mailboxes: int, settle: float,
                      window: float) -> dict[str, Any]:
    users = [f"idle{i}" for i in range(mailboxes)]
    before = proc_status()
    group = ImapListenerGroup([dovecot.account(u) for u in users], queue=queue, cursors=MemoryCursorStore())
    async with trio.open_nursery() as nursery:
        t0 = time.monotonic()
        await nursery.start(group.run)
        startup = time.monotonic() - t0
        states = group.summary()
        after_start = proc_status()
        # trio keeps idle worker threads for 10 s; measure once they are gone.
        await trio.sleep(settle)
        cpu0, wall0 = os.times(), time.monotonic()
        await trio.sleep(window)
        cpu1, wall1 = os.times(), time.monotonic()
        steady = proc_status()
        states_after = group.summary()
        t1 = time.monotonic()
        nursery.cancel_scope.cancel()
    shutdown = time.monotonic() - t1
    # Dovecot's own word that every session ended with LOGOUT (its log lags a little).
    log_path = dovecot.log
    logged_out = 0
    for _ in range(100):
        logged_out = len(re.findall(r"imap\(idle\d+\).*Disconnected: Logged out", log_path.read_text(errors="replace")))
        if logged_out >= mailboxes:
            break
        await trio.sleep(0.05)
    cpu = (cpu1.user - cpu0.user + cpu1.system - cpu0.system) / (wall1 - wall0) * 100
    return {
        "mailboxes": mailboxes,
        "startup_s": round(startup, 2),
        "states_at_start": states,
        "states_after": states_after,
        "rss_mib_before": round(before["VmRSS"] / 1024, 1),
        "rss_mib_idle": round(steady["VmRSS"] / 1024, 1),
        "rss_kib_per_mailbox": round((steady["VmRSS"] - before["VmRSS"]) / mailboxes, 1),
        "threads_after_start": after_start["Threads"],
        "threads_idle": steady["Threads"],
        "cpu_percent_idle": round(cpu, 2),
        "shutdown_s": round(shutdown, 2),
        "sessions_logged_out": logged_out,
    }


# --------------------------------------------------------------------------- (c) catch-up


async def bench_catch_up(dovecot: BenchDovecot, redis_url: str, messages: int) -> dict[str, Any]:
    async with running_queue(redis_url) as queue:
        return await _bench_catch_up(dovecot, queue, messages)


async def _bench_catch_up(dovecot: BenchDovecot, queue: Any, messages: int) -> dict[str, Any]:
    user = "catchup"
    timed = TimedQueue(queue)
    cursors = MemoryCursorStore()
    dovecot.maildir(user)
    account = dovecot.account(user)
    # First run: the listener learns the (empty) folder and stores its cursor.
    group = ImapListenerGroup([account], queue=timed, cursors=cursors)
    async with trio.open_nursery() as nursery:
        await nursery.start(group.run)
        nursery.cancel_scope.cancel()
    # Downtime: mail keeps arriving.
    t_drop = time.monotonic()
    dovecot.drop_messages(user, messages)
    drop_s = time.monotonic() - t_drop
    group = ImapListenerGroup([account], queue=timed, cursors=cursors)
    async with trio.open_nursery() as nursery:
        t0 = time.monotonic()
        await nursery.start(group.run)
        with trio.fail_after(300):
            while timed.count < messages:
                await trio.sleep(0.01)
        elapsed = time.monotonic() - t0
        status = group.status()[0]
        nursery.cancel_scope.cancel()
    return {
        "messages": messages,
        "enqueued": timed.count,
        "cursor_last_uid": status.last_uid,
        "seconds": round(elapsed, 2),
        "jobs_per_s": round(messages / elapsed),
        "maildir_write_s": round(drop_s, 2),
    }


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appends", type=int, default=200, help="appends for (a) (default 200)")
    parser.add_argument("--mailboxes", type=int, default=500, help="idle mailboxes for (b) (default 500)")
    parser.add_argument("--messages", type=int, default=10_000, help="waiting messages for (c) (default 10000)")
    parser.add_argument("--window", type=float, default=10.0, help="idle measuring window for (b), seconds")
    parser.add_argument("--only", default="abc", help="which parts to run, e.g. 'a' or 'bc'")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args()
    log.configure(args.log_level)
    if os.geteuid() != 0:
        print("bench/imap: run as root (the private Dovecot's mail tree belongs to nobody)", file=sys.stderr)
        return 2

    base = Path(tempfile.mkdtemp(prefix="inboundd-bench-imap-"))
    os.chmod(base, 0o755)  # Dovecot's auth process (user dovecot) must reach the passwd-file
    users = [f"lat{i}" for i in range(2)] + [f"idle{i}" for i in range(args.mailboxes)] + ["catchup"]
    dovecot = BenchDovecot(base / "dovecot", users)
    redis_server = RedisServer(base / "redis").start()
    results: dict[str, Any] = {}
    try:
        dovecot.start()
        if "a" in args.only:
            results["a_latency"] = trio.run(bench_latency, dovecot, redis_server.url, args.appends)
            print("(a) added latency:", results["a_latency"], flush=True)
        if "b" in args.only:
            results["b_idle"] = trio.run(bench_idle, dovecot, redis_server.url, args.mailboxes, 11.0, args.window)
            print("(b) idle mailboxes:", results["b_idle"], flush=True)
        if "c" in args.only:
            results["c_catch_up"] = trio.run(bench_catch_up, dovecot, redis_server.url, args.messages)
            print("(c) catch-up:", results["c_catch_up"], flush=True)
    finally:
        dovecot.stop()
        redis_server.stop()
        if os.environ.get("BENCH_KEEP"):
            print("kept", base)
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
