"""Run the real daemon as a subprocess, with a real sd_notify socket, for tests and benches.

``DaemonProcess`` writes a configuration pointing at private services, starts
``python -m inboundd.daemon`` with ``NOTIFY_SOCKET`` bound to a datagram
socket it reads, and offers waits on notify messages and log events (each
with a deadline — never a blind sleep).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import httpx

from fakes import imap_job
from services import free_port
from waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent


class NotifyListener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"inboundd-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def poll(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def seen(self, key: str, value: str | None = None) -> list[tuple[float, dict[str, str]]]:
        self.poll()
        return [(t, m) for t, m in self.messages if key in m and (value is None or m[key] == value)]

    def wait(self, key: str, value: str | None = None, timeout: float = 30.0, after: int = 0) -> dict[str, str]:
        """Wait for a message with *key* (= *value*) beyond the first *after* such messages."""
        wait_for(lambda: len(self.seen(key, value)) > after, timeout, what=f"notify {key}={value}")
        return self.seen(key, value)[after][1]

    def close(self) -> None:
        self.sock.close()


class DaemonProcess:
    """One inboundd subprocess on a config written to *directory*."""

    def __init__(
        self,
        directory: Path,
        *,
        redis_url: str,
        pg_dsn: str,
        extra_config: str = "",
        daemon_section: str = "",
        env: dict[str, str] | None = None,
        abstract_notify: bool = False,
        command: list[str] | None = None,
        user: str | None = None,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config_path = directory / "inboundd.toml"
        self.control_socket = directory / "control.sock"
        self.log_path = directory / "daemon.log"
        self.redis_url = redis_url
        self.pg_dsn = pg_dsn
        self.daemon_section = daemon_section or 'consumers = 2\nshutdown_grace = "10s"'
        self.extra_config = extra_config
        #: More ``[http]`` keys (``public_url = "…"``); the port is :attr:`port`.
        self.http_extra = ""
        self.env = env or {}
        self.notify = NotifyListener(directory / "notify.sock", abstract=abstract_notify)
        #: The daemon's argv before ``-c FILE``: this checkout's by default, an installed one if given.
        self.command = command or [sys.executable, "-m", "inboundd.daemon"]
        #: Run the daemon as this user (we are root), as the unit's User= does.
        self.user = user
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self.write_config()

    # ------------------------------------------------------------------ config

    def config_text(self, daemon_section: str | None = None, extra: str | None = None) -> str:
        return (
            f"[daemon]\n{daemon_section if daemon_section is not None else self.daemon_section}\n"
            'log_format = "json"\n'
            f'[redis]\nurl = "{self.redis_url}"\nsocket_timeout = "600ms"\n'
            f'[postgres]\ndsn = "{self.pg_dsn}"\nconnect_timeout = "2s"\n'
            f'[http]\nlisten = ["127.0.0.1:{self.port}"]\ngraceful_timeout = "1s"\n{self.http_extra}\n'
            f'[control]\nsocket = "{self.control_socket}"\n'
            f"{extra if extra is not None else self.extra_config}\n"
        )

    def write_config(self, text: str | None = None) -> None:
        self.config_path.write_text(text if text is not None else self.config_text())

    # ------------------------------------------------------------------ process

    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> "DaemonProcess":
        env = dict(os.environ)
        env.pop("WATCHDOG_USEC", None)
        env.update({"NOTIFY_SOCKET": self.notify.address, "PYTHONUNBUFFERED": "1"}, **self.env)
        if self.user is not None:  # an installed daemon: nothing may point it at this checkout's code
            for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
                env.pop(name, None)
        self._log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [*self.command, "-c", str(self.config_path)],
            cwd=ROOT if self.user is None else "/", env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
            start_new_session=True, user=self.user, group=self.user, extra_groups=[] if self.user else None,
        )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0, after: int = 0) -> None:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log_text()[-4000:]}")
            return len(self.notify.seen("READY", "1")) > after

        wait_for(ready, timeout, what="READY=1 from the daemon")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL the process group if it does not exit in time."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        return self.process.returncode

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        self.notify.close()

    # ------------------------------------------------------------------ observation

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines (optionally only those with ``event == name``)."""
        found = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if name is None or record.get("event") == name:
                    found.append(record)
        return found

    def wait_event(self, name: str, timeout: float = 30.0, where: Callable[[dict[str, Any]], bool] | None = None,
                   count: int = 1) -> list[dict[str, Any]]:
        def matching() -> list[dict[str, Any]]:
            return [e for e in self.events(name) if where is None or where(e)]

        wait_for(lambda: len(matching()) >= count, timeout, what=f"log event {name}")
        return matching()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, timeout: float = 10.0) -> httpx.Response:
        return httpx.get(self.url + path, timeout=timeout)

    def control(self, method: str, path: str, timeout: float = 10.0) -> httpx.Response:
        transport = httpx.HTTPTransport(uds=str(self.control_socket))
        with httpx.Client(transport=transport, base_url="http://control", timeout=timeout) as client:
            return client.request(method, path)


def enqueue(redis_url: str, jobs: list[Any], prefix: str = "inboundd") -> None:
    """Enqueue *jobs* through the real Queue, as an ingress would."""
    import trio

    from inboundd.config import QueueConfig, RedisConfig
    from inboundd.queue import Queue
    from inboundd.redisio import RedisIO

    async def go() -> None:
        rio = RedisIO.from_config(RedisConfig(url=redis_url))
        try:
            queue = Queue(rio, QueueConfig(), prefix=prefix)
            await queue.ensure_group()
            await queue.enqueue_many(jobs)
        finally:
            await rio.close()

    trio.run(go)


def queue_stats(redis_url: str, prefix: str = "inboundd") -> Any:
    """The daemon's queue as ``inboundctl status`` sees it (:class:`inboundd.queue.QueueStats`)."""
    import trio

    from inboundd.config import QueueConfig, RedisConfig
    from inboundd.queue import Queue
    from inboundd.redisio import RedisIO

    async def go() -> Any:
        rio = RedisIO.from_config(RedisConfig(url=redis_url))
        try:
            return await Queue(rio, QueueConfig(), prefix=prefix).stats()
        finally:
            await rio.close()

    return trio.run(go)


def seed_queue(redis_url: str, *, ready: int = 0, dead: dict[str, int] | None = None, delayed: int = 0,
               in_flight: int = 0) -> dict[str, list[str]]:
    """Put a known state into the daemon's queue through the real Queue API; returns job ids by kind.

    *dead* maps account → how many of its jobs are dead-lettered.
    """
    import trio

    from inboundd.config import QueueConfig, RedisConfig
    from inboundd.queue import Queue
    from inboundd.redisio import RedisIO

    ids: dict[str, list[str]] = {"ready": [], "dead": [], "delayed": [], "in_flight": []}

    def make(account: str, uid: int):
        return imap_job(uid, account, uidvalidity=7)

    async def go() -> None:
        rio = RedisIO.from_config(RedisConfig(url=redis_url))
        queue = Queue(rio, QueueConfig(), prefix="inboundd")
        try:
            await queue.ensure_group()
            uid = 0
            doomed = [make(account, uid := uid + 1) for account, n in (dead or {}).items() for _ in range(n)]
            pending = doomed + [make("support", uid := uid + 1) for _ in range(delayed + in_flight)]
            await queue.enqueue_many(pending)
            claimed = await queue.claim("test-consumer", len(pending), block=0) if pending else []
            assert len(claimed) == len(pending)
            for item in claimed[:len(doomed)]:
                assert await queue.dead_letter("test-consumer", item, reason="parse_error",
                                               error="boom: cannot parse\nsecond line", attempts=8)
                ids["dead"].append(item.job.id)
            for item in claimed[len(doomed):len(doomed) + delayed]:
                assert await queue.retry("test-consumer", item, item.job, 3600, kind="error")
                ids["delayed"].append(item.job.id)
            ids["in_flight"] = [item.job.id for item in claimed[len(doomed) + delayed:]]
            fresh = [make("support", uid := uid + 1) for _ in range(ready)]
            await queue.enqueue_many(fresh)
            ids["ready"] = [job.id for job in fresh]
        finally:
            await rio.close()

    trio.run(go)
    return ids


def listener_states(daemon: DaemonProcess) -> list[str]:
    """The state of each listener, from the daemon's control socket."""
    return [listener["state"] for listener in daemon.control("GET", "/status").json()["listeners"]]


def wait_idle(daemon: DaemonProcess) -> None:
    """Wait until the daemon's only listener idles (it is then sure to see new mail)."""
    wait_for(lambda: listener_states(daemon) == ["idle"], 30, what="the listener to be idle")


def scrape(daemon: DaemonProcess) -> dict[tuple[str, tuple], float]:
    """The daemon's ``/metrics`` as ``(sample name, sorted labels) → value``."""
    from prometheus_client.parser import text_string_to_metric_families

    response = daemon.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample_sum(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of *name* whose labels include *labels*."""
    return sum(value for (sample, got), value in samples.items()
               if sample == name and all((k, v) in got for k, v in labels.items()))


def ledger_counts(pg_dsn: str) -> dict[str, int]:
    """Ledger rows per status in the database at *pg_dsn*."""
    import psycopg

    from inboundd.store import ledger

    with psycopg.connect(pg_dsn) as conn:
        return ledger.counts(conn)


def stored(pg_dsn: str) -> list[tuple[str, str]]:
    """``(subject, from address)`` of every stored message, in the order stored."""
    import psycopg

    with psycopg.connect(pg_dsn) as conn:
        return conn.execute("SELECT subject, from_address FROM inbound_messages ORDER BY id").fetchall()


class TableLock:
    """Holds a lock on a table from a test connection, so the daemon's statements on it wait.

    ``ACCESS EXCLUSIVE`` on ``inbound_ledger`` stalls every ledger claim (a job
    in flight that cannot finish); ``SHARE`` on ``inbound_messages`` lets the
    claim through and stalls the store transaction inside it.
    """

    def __init__(self, pg_dsn: str, table: str, mode: str = "ACCESS EXCLUSIVE") -> None:
        import psycopg

        self.dsn = pg_dsn
        self.conn = psycopg.connect(pg_dsn)
        self.conn.execute(f"LOCK TABLE {table} IN {mode} MODE")

    def waiters(self) -> int:
        """Sessions of this database waiting for a lock (a daemon statement stalled on ours)."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as probe:
            return probe.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).fetchone()[0]

    def release(self) -> None:
        """Give the lock up (a server that went away has released it already)."""
        import psycopg

        if not self.conn.closed:
            try:
                self.conn.rollback()
            except psycopg.OperationalError:
                pass
            self.conn.close()


def imap_section(directory: Path, port: int, user: str, password: str, account: str = "support",
                 **settings: str) -> str:
    """An ``[[imap]]`` table for a mailbox on the private Dovecot (password in a file under *directory*).

    *settings* are raw TOML values (``start_from='"all"'``) overriding the fast test defaults.
    """
    secret = directory / f"{account}.password"
    secret.write_text(password + "\n")
    values = {"id": f'"{account}"', "host": '"127.0.0.1"', "port": str(port), "tls": '"none"',
              "username": f'"{user}"', "password_file": f'"{secret}"', "reconnect_base": '"100ms"',
              "reconnect_cap": '"1s"', "lease": "0"}
    values.update(settings)
    return "[[imap]]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())


class TcpForwarder:
    """A server that comes up later: once started, listens on *port* and forwards each connection to *target_port*.

    Before :meth:`start` nothing listens on *port* (connections are refused),
    as with a PostgreSQL that is not up yet. Threads, so it serves a daemon
    subprocess whatever the test does meanwhile.
    """

    def __init__(self, port: int, target_port: int) -> None:
        self.port = port
        self.target_port = target_port
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []

    def start(self) -> "TcpForwarder":
        import threading

        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._listener = listener

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (src, dst):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        def accept() -> None:
            while True:
                try:
                    downstream, _ = listener.accept()
                except OSError:
                    return  # stopped
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
                self._sockets += [downstream, upstream]
                threading.Thread(target=pump, args=(downstream, upstream), daemon=True).start()
                threading.Thread(target=pump, args=(upstream, downstream), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone may not)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
