#!/usr/bin/env python3
"""bench/webhooks — notifications/s through the daemon's webhooks with durable enqueue, against a bare endpoint.

Two servers, each in its own process, measured in the same run with the
same load (one daemon serves both providers):

* **microsoft**: the real daemon (``python -m inboundd.daemon``) with one
  ``[[microsoft]]`` account whose subscription it created at the loopback
  fake Graph (tests/graph_fakes.py), on a private Redis with an append-only
  file (``--fsync everysec``, the setting README recommends, or ``always``)
  and a private PostgreSQL.
  Every POST carries genuine change notifications (the subscription's own
  ``clientState``, the account's tenant, a new message id each) and is
  answered 202 only once Redis acknowledged the pointer jobs.
  ``consumers = 0``: the daemon only ingests, so the bench measures the
  webhook, not message processing.
* **google**: the same daemon with one ``[[google]]`` account on the
  loopback fake Google (tests/google_fake.py). Every POST is an
  authenticated Pub/Sub push (``Authorization: Bearer`` OIDC token, RS256,
  verified against the fake's certificates — fetched once and cached, and
  one token reused as Pub/Sub does for an hour; a new historyId each),
  answered 204 only once Redis acknowledged the push job.
* **bare**: a hypercorn-trio ASGI app that reads the body and answers 202,
  with the same hypercorn settings: the ceiling of the HTTP stack alone. It
  gets exactly the requests each provider's target gets (``bare`` for
  Graph's, ``bare-google`` for the pushes, token header included).

Load (from this process, trio over keep-alive HTTP/1.1 connections):

1. *max*: closed loop, ``--connections`` clients each sending as soon as
   its last answer came, for ``--seconds``: notifications/s each server
   sustains, and the ratio microsoft / bare;
2. *rate*: open loop at ``--rate`` notifications/s for ``--seconds``
   (each request timed from when it was due, so queueing counts): achieved
   rate and answer time p50/p99/max, for both servers.

``--batch N`` puts N notifications in each POST (Graph batches; 1 is the
worst case). Every answer must be 202 (anything else is counted and
printed; 204 for the pushes). A run prints one line per measurement, then
the verdicts against the goals (ratio ≥ 0.9 of bare, p99 < 100 ms at 500
notifications/s). ``--only microsoft`` or ``--only google`` measures one.

Usage::

    .venv/bin/python bench/webhooks.py                      # 10 s each, 16 connections, 500/s, batch 1
    .venv/bin/python bench/webhooks.py --seconds 20 --rate 800 --batch 5
"""

from __future__ import annotations

import sys
from pathlib import Path

# This directory holds scripts named like modules (imap.py, processing.py): never import from it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import trio  # noqa: E402

GOAL_RATIO, GOAL_P99, GOAL_RATE = 0.9, 0.100, 500


# --------------------------------------------------------------------------- the bare endpoint (own process)


def serve_bare(port: int) -> None:
    """Run the bare endpoint on *port* until killed (``--serve-bare``)."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from graph_fakes import asgi_lifespan

    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            await asgi_lifespan(receive, send)
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.keep_alive_timeout = 5
    config.include_server_header = False
    trio.run(serve, app, config)


# --------------------------------------------------------------------------- load generator


class Connection:
    """One keep-alive HTTP/1.1 connection; :meth:`post` returns the status code."""

    def __init__(self, stream: trio.SocketStream, port: int) -> None:
        self.stream = stream
        self.port = port
        self.buffer = b""
        #: Times the server closed the connection (hypercorn does after keep_alive_max_requests).
        self.reconnects = 0

    @classmethod
    async def open(cls, port: int) -> "Connection":
        return cls(await trio.open_tcp_stream("127.0.0.1", port), port)

    async def post(self, path: str, body: bytes, headers: bytes = b"") -> int:
        """POST *body* (with extra *headers*, CRLF-terminated lines); a connection the server closed between
        requests is reopened once, as clients do."""
        try:
            return await self._post(path, body, headers)
        except (ConnectionError, trio.BrokenResourceError):
            if self.buffer:
                raise
            await self.stream.aclose()
            self.stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            self.reconnects += 1
            return await self._post(path, body, headers)

    async def _post(self, path: str, body: bytes, headers: bytes = b"") -> int:
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n").encode() + headers + b"\r\n"
        await self.stream.send_all(head + body)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += await self._more()
        header, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = header.split(b"\r\n")
        status = int(lines[0].split()[1])
        length, chunked = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:  # read to the last chunk; the answers here are tiny
            while b"0\r\n\r\n" not in rest:
                rest += await self._more()
            self.buffer = rest.split(b"0\r\n\r\n", 1)[1]
            return status
        while len(rest) < length:
            rest += await self._more()
        self.buffer = rest[length:]
        return status

    async def _more(self) -> bytes:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk


@dataclass
class Result:
    requests: int = 0
    notifications: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    async def send(self, conn: Connection, target: "Target", batch: int, *, since: float) -> bool:
        """POST the next request of *target* and record its answer, timed from *since*; False when the
        connection broke."""
        body, headers = target.request()
        try:
            status = await conn.post(target.path, body, headers)
        except (OSError, ConnectionError, trio.BrokenResourceError) as exc:
            self.error(type(exc).__name__)
            return False
        self.latencies.append(trio.current_time() - since)
        if status == target.accepted:
            self.requests += 1
            self.notifications += batch
        else:
            self.error(f"HTTP {status}")
        return True

    @property
    def rate(self) -> float:
        return self.notifications / self.elapsed if self.elapsed else 0.0

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


@dataclass
class Target:
    """Where requests go, how each is made (body and extra header lines), and the status that accepts it."""

    port: int
    path: str
    request: Callable[[], tuple[bytes, bytes]]
    accepted: int


async def closed_loop(target: Target, batch: int, connections: int, seconds: float) -> Result:
    """Every connection sends as soon as its previous answer came, for *seconds*."""
    result = Result()
    conns = [await Connection.open(target.port) for _ in range(connections)]
    start = trio.current_time()
    deadline = start + seconds

    async def client(conn: Connection) -> None:
        while trio.current_time() < deadline:
            if not await result.send(conn, target, batch, since=trio.current_time()):
                return

    async with trio.open_nursery() as nursery:
        for conn in conns:
            nursery.start_soon(client, conn)
    result.elapsed = trio.current_time() - start
    for conn in conns:
        await conn.stream.aclose()
    return result


async def open_loop(target: Target, batch: int, connections: int, rate: float, seconds: float) -> Result:
    """A request every ``batch / rate`` seconds; latency from when it was due (queueing included)."""
    result = Result()
    free: trio.MemorySendChannel[Connection]
    free, take = trio.open_memory_channel[Connection](connections)
    for _ in range(connections):
        free.send_nowait(await Connection.open(target.port))
    interval = batch / rate
    total = int(seconds / interval)
    start = trio.current_time() + 0.05

    async def one(conn: Connection, due: float) -> None:
        if await result.send(conn, target, batch, since=due):
            free.send_nowait(conn)

    async with trio.open_nursery() as nursery:
        for index in range(total):
            due = start + index * interval
            await trio.sleep_until(due)
            conn = await take.receive()  # all busy: this request waits, and its wait counts
            nursery.start_soon(one, conn, due)
    result.elapsed = max(trio.current_time() - start, total * interval)
    while True:
        try:
            conn = take.receive_nowait()
        except trio.WouldBlock:
            break
        await conn.stream.aclose()
    return result


# --------------------------------------------------------------------------- the servers


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except Exception:  # noqa: BLE001 - not yet
            pass
        time.sleep(0.05)
    raise SystemExit(f"bench: timed out waiting for {what}")


def http_ok(port: int, path: str) -> bool:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code < 500


class Bench:
    """The private servers, the fakes, the daemon and the bare endpoint; :meth:`close` stops all."""

    def __init__(self, directory: Path, fsync: str) -> None:
        from graph_fakes import FakeAzureAD, FakeGraph, make_ca
        from services import PostgresServer, RedisServer, free_port

        self.directory = directory
        self.processes: list[subprocess.Popen[bytes]] = []
        self.redis = RedisServer(directory / "redis", persist=True).start()
        import redis

        with redis.Redis.from_url(self.redis.url) as client:
            client.config_set("appendfsync", fsync)
        self.pg = PostgresServer().start()
        ca, ca_file = make_ca(directory)
        self.aad = FakeAzureAD(ca).start()
        app = self.aad.register_app("acme.onmicrosoft.com", "app-1", "s3cret")
        self.graph = FakeGraph(self.aad).start()
        self.graph.add_mailbox("support@acme.com", app.tid)
        (directory / "m365.secret").write_text("s3cret")
        from google_fake import FakeGoogle
        from google_helpers import google_section

        self.google = FakeGoogle().start()
        google = google_section(directory, self.google, account="bench-gmail")
        self.daemon_port, self.bare_port = free_port(), free_port()
        config = directory / "inboundd.toml"
        config.write_text(f"""
[daemon]
consumers = 0
log_level = "warning"
[redis]
url = "{self.redis.url}"
[postgres]
dsn = "{self.pg.create_database('bench')}"
[http]
listen = ["127.0.0.1:{self.daemon_port}"]
public_url = "http://127.0.0.1:{self.daemon_port}"
[control]
socket = "{directory / 'control.sock'}"
[[microsoft]]
id = "bench"
tenant = "acme"
directory_id = "acme.onmicrosoft.com"
client_id = "app-1"
client_secret_file = "{directory / 'm365.secret'}"
mailbox = "support@acme.com"
authority_url = "{self.aad.url}"
graph_url = "{self.graph.url}"
ca_file = "{ca_file}"
{google}
""")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        log = open(directory / "daemon.log", "wb")
        self.processes.append(subprocess.Popen([sys.executable, "-m", "inboundd.daemon", "-c", str(config)],
                                               env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
        self.processes.append(subprocess.Popen([sys.executable, __file__, "--serve-bare", str(self.bare_port)],
                                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                               cwd=ROOT))
        wait_until(lambda: self.graph.subscriptions, 60, "the daemon to subscribe at the fake Graph")
        wait_until(lambda: self.google.count("watch"), 60, "the daemon to watch the mailbox at the fake Google")
        wait_until(lambda: http_ok(self.daemon_port, "/readyz"), 30, "the daemon to be ready")
        wait_until(lambda: http_ok(self.bare_port, "/"), 30, "the bare endpoint")
        (self.subscription,) = self.graph.subscriptions.values()

    def notifications(self, batch: int) -> Callable[[], bytes]:
        """A new genuine notification collection of *batch* items per call (new message ids)."""
        sub = self.subscription

        def make() -> bytes:
            items = [self.graph.notification_item(sub, "AAMkAGI2" + uuid.uuid4().hex) for _ in range(batch)]
            return json.dumps({"value": items}).encode()

        return make

    def pushes(self) -> Callable[[], tuple[bytes, bytes]]:
        """A new authenticated Pub/Sub push per call (one token, reused as Pub/Sub does; a new historyId each)."""
        from google_fake import push_body
        from google_helpers import MAILBOX

        header = f"Authorization: Bearer {self.google.push_keys[0].token()}\r\n".encode()
        counter = iter(range(10_000, 10**9))

        def make() -> tuple[bytes, bytes]:
            history_id = next(counter)
            return push_body(MAILBOX, history_id, message_id=str(history_id)), header

        return make

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        self.graph.stop()
        self.aad.stop()
        self.google.stop()
        self.redis.stop()
        self.pg.cleanup()


def line(name: str, what: str, result: Result) -> str:
    errors = f"  errors {result.errors}" if result.errors else ""
    return (f"{name:<10} {what:<22} {result.rate:8.0f} notifications/s  {result.requests:7d} POSTs  "
            f"p50 {result.quantile(0.5) * 1000:6.1f} ms  p99 {result.quantile(0.99) * 1000:6.1f} ms  "
            f"max {max(result.latencies, default=float('nan')) * 1000:6.1f} ms{errors}")


async def run(bench: Bench, args: argparse.Namespace) -> int:
    notifications = bench.notifications(args.batch)
    graph = lambda: (notifications(), b"")  # noqa: E731
    pushes = bench.pushes()
    # Each provider's target and a bare endpoint given the very same requests.
    pairs = {
        "microsoft": (Target(bench.daemon_port, "/webhooks/microsoft", graph, 202),
                      ("bare", Target(bench.bare_port, "/webhooks/microsoft", graph, 202))),
        "google": (Target(bench.daemon_port, "/webhooks/google", pushes, 204),
                   ("bare-google", Target(bench.bare_port, "/webhooks/google", pushes, 202))),
    }
    if args.only:
        pairs = {args.only: pairs[args.only]}
    targets = {name: target for name, (target, _) in pairs.items()}
    targets.update({bare_name: bare for _, (_, (bare_name, bare)) in pairs.items()})
    batch = {name: (args.batch if name in ("microsoft", "bare") else 1) for name in targets}
    # Warm all up (connections, code paths, the token, certificate and subscription caches).
    for name, target in targets.items():
        await closed_loop(target, batch[name], args.connections, 1.0)
    maxed: dict[str, Result] = {}
    paced: dict[str, Result] = {}
    for name, target in targets.items():
        maxed[name] = await closed_loop(target, batch[name], args.connections, args.seconds)
        print(line(name, f"max, {args.connections} connections", maxed[name]), flush=True)
    for name, target in targets.items():
        paced[name] = await open_loop(target, batch[name], args.connections, args.rate, args.seconds)
        print(line(name, f"at {args.rate:g}/s", paced[name]), flush=True)
    for name, (_, (bare_name, _)) in pairs.items():
        ratio_max = maxed[name].rate / maxed[bare_name].rate
        ratio_paced = paced[name].rate / paced[bare_name].rate
        p99 = paced[name].quantile(0.99)
        print(f"ratio {name}/{bare_name}: max {ratio_max:.2f}, at {args.rate:g}/s {ratio_paced:.2f} "
              f"(goal >= {GOAL_RATIO})")
        print(f"{name} p99 at {args.rate:g}/s: {p99 * 1000:.1f} ms (goal < {GOAL_P99 * 1000:.0f} ms at "
              f"{GOAL_RATE}/s)")
    if "google" in pairs:
        print(f"google: certificates fetched {bench.google.count('certs')} time(s)")
    failed = any(r.errors for r in (*maxed.values(), *paced.values()))
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measurement (default 10)")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive client connections (default 16)")
    parser.add_argument("--rate", type=float, default=GOAL_RATE, help="notifications/s of the paced run (500)")
    parser.add_argument("--batch", type=int, default=1, help="notifications per POST (default 1)")
    parser.add_argument("--fsync", choices=("everysec", "always"), default="everysec",
                        help="Redis appendfsync (default everysec, as README recommends)")
    parser.add_argument("--only", choices=("microsoft", "google"), help="measure one provider (and its bare twin)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (daemon log) afterwards")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    directory = Path(tempfile.mkdtemp(prefix="inboundd-bench-webhooks-"))
    print(f"bench/webhooks: batch {args.batch}, {args.connections} connections, {args.seconds:g} s per run, "
          f"Redis appendfsync {args.fsync}, consumers 0 (work dir {directory})", flush=True)
    bench = Bench(directory, args.fsync)
    try:
        return trio.run(run, bench, args)
    finally:
        bench.close()
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
