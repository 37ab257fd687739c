"""Operating a running daemon: inboundctl status/drain/resume/dlq/redrive, /metrics, the control socket.

Real daemon subprocesses (tests/daemon_harness.py) on private Redis,
PostgreSQL and Dovecot; inboundctl runs in-process through ``cli.main``, as
an operator would run it next to the daemon.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import httpx
import psycopg
import pytest

from daemon_harness import DaemonProcess, imap_section, ledger_counts, sample_sum, scrape, seed_queue
from imap_helpers import append_subjects
from inboundd import cli
from inboundd.store import ledger
from waiting import wait_for


def ctl(capsys: pytest.CaptureFixture[str], daemon: DaemonProcess, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["-c", str(daemon.config_path), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def status_json(capsys, daemon: DaemonProcess) -> tuple[int, dict]:
    code, out, err = ctl(capsys, daemon, "status", "--json")
    assert out, err
    return code, json.loads(out)


def listener_state(capsys, daemon: DaemonProcess) -> str | None:
    _, status = status_json(capsys, daemon)
    return status["listeners"][0]["state"] if status["listeners"] else None


# --------------------------------------------------------------------------- status


def test_status_reflects_a_known_degraded_state(capsys, daemon_factory, redis_url, pg_dsn, dovecot, imap_user,
                                                tmp_path) -> None:
    """3 ready jobs, 2 dead-lettered, a listener whose password is wrong: exit 1, each problem named."""
    seed_queue(redis_url, ready=3, dead={"support": 2})
    user, _ = imap_user
    section = imap_section(tmp_path, dovecot.port, user, "wrong-password", auth_failure_limit="1")
    daemon = daemon_factory(redis_url, pg_dsn, daemon_section="consumers = 0", extra_config=section).start()
    wait_for(lambda: listener_state(capsys, daemon) == "auth_failed", 30, what="listener auth_failed")

    code, status = status_json(capsys, daemon)
    assert code == cli.EXIT_FAILED
    assert status["daemon"]["state"] == "running" and status["daemon"]["pid"] == daemon.process.pid
    assert status["daemon"]["config"] == str(daemon.config_path)
    queue = status["queue"]
    assert (queue["ready"], queue["in_flight"], queue["delayed"], queue["dead"]) == (3, 0, 0, 2)
    [listener] = status["listeners"]
    assert (listener["account"], listener["folder"], listener["state"]) == ("support", "INBOX", "auth_failed")
    assert listener["error"]
    problems = status["health"]["problems"]
    assert any("support/INBOX is auth_failed" in p for p in problems)
    assert any("2 dead-lettered" in p for p in problems)

    code, out, _ = ctl(capsys, daemon, "status")
    assert code == cli.EXIT_FAILED
    assert out.startswith("degraded: listener support/INBOX is auth_failed")
    assert out.splitlines()[0].endswith("(and 1 more)")           # the dead letters
    assert "\nPROBLEMS\n  ! listener support/INBOX is auth_failed" in out


def test_status_healthy_then_not_running(capsys, daemon_factory, redis_url, pg_dsn, dovecot, imap_user,
                                         tmp_path) -> None:
    user, password = imap_user
    section = imap_section(tmp_path, dovecot.port, user, password)
    daemon = daemon_factory(redis_url, pg_dsn, extra_config=section).start()
    wait_for(lambda: listener_state(capsys, daemon) == "idle", 30, what="listener idle")
    code, status = status_json(capsys, daemon)
    assert code == cli.EXIT_OK, status["health"]
    assert status["daemon"]["state"] == "running" and status["health"]["problems"] == []
    assert status["queue"]["dead"] == 0 and status["listeners"][0]["state"] == "idle"
    assert status["health"]["summary"] == "healthy"
    code, out, _ = ctl(capsys, daemon, "status")
    assert code == cli.EXIT_OK and out.startswith("healthy\n\nDAEMON\n")

    assert daemon.stop() == 0
    seed_queue(redis_url, ready=2, dead={"support": 1})
    code, status = status_json(capsys, daemon)
    assert code == cli.EXIT_NOT_RUNNING
    assert status["daemon"]["state"] == "not_running"
    assert status["queue"]["dead"] == 1 and status["queue"]["ready"] == 2
    assert status["ledger"] is not None and status["errors"] == {}


# --------------------------------------------------------------------------- drain / resume


class SlowProxy:
    """A loopback TCP proxy in front of the real Dovecot that delays every server reply by ``delay``.

    It makes a consume-time fetch last long enough to drain while jobs are in
    flight, and records what each client sent (to see LOGOUT).
    """

    def __init__(self, target_port: int, delay: float) -> None:
        import threading

        self.target_port = target_port
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.connections: list[dict] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            record = {"sent": bytearray(), "open": True}
            with self.lock:
                self.connections.append(record)
            threading.Thread(target=self._pump, args=(client, server, record, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, record, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: dict, from_server: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if from_server and self.delay:
                    time.sleep(self.delay)  # the injected latency itself, not a wait for a condition
                if not from_server:
                    with self.lock:
                        record["sent"] += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            record["open"] = False
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def logged_out(self) -> int:
        with self.lock:
            return sum(1 for c in self.connections if b"LOGOUT" in bytes(c["sent"]).upper() and not c["open"])

    def close(self) -> None:
        self.listener.close()


def post_webhook(daemon: DaemonProcess) -> httpx.Response:
    return httpx.post(daemon.url + "/webhooks/microsoft", json={"value": []}, timeout=10)


def test_drain_finishes_in_flight_jobs_and_resume_restores_intake(capsys, daemon_factory, redis_url, pg_dsn,
                                                                   dovecot, imap_user, tmp_path) -> None:
    user, password = imap_user
    append_subjects(dovecot.port, user, password, [f"before {n}" for n in range(8)])
    proxy = SlowProxy(dovecot.port, delay=0.4)
    try:
        section = imap_section(tmp_path, proxy.port, user, password, start_from='"all"', fetch_connections="2")
        daemon = daemon_factory(redis_url, pg_dsn, extra_config=section + "[queue]\nclaim_batch = 1\n",
                                daemon_section='consumers = 2\nshutdown_grace = "30s"').start()
        assert post_webhook(daemon).status_code == 202  # running: an empty notification collection is accepted
        wait_for(lambda: sample_sum(scrape(daemon), "inboundd_jobs_enqueued_total", account="support") == 8
                 and sample_sum(scrape(daemon), "inboundd_jobs_claimed_total", account="support") >= 1,
                 60, what="8 jobs enqueued and one claimed")

        body = daemon.control("POST", "/drain").json()
        assert body["daemon"]["state"] == "draining"
        assert body["consumers"]["busy"] >= 1, body  # jobs are in flight while the drain starts
        assert post_webhook(daemon).status_code == 503

        code, out, err = ctl(capsys, daemon, "drain", "--wait", "--timeout", "60s")
        assert code == 0, err
        assert out.startswith("drained:")
        proxy.delay = 0
        drained = scrape(daemon)
        claimed = sample_sum(drained, "inboundd_jobs_claimed_total", account="support")
        acked = sample_sum(drained, "inboundd_jobs_acked_total", account="support")
        assert claimed == acked and 1 <= claimed < 8, (claimed, acked)
        assert ledger_counts(pg_dsn) == {"processed": claimed}

        code, status = status_json(capsys, daemon)
        assert code == cli.EXIT_FAILED and status["daemon"]["state"] == "drained"
        assert status["queue"]["in_flight"] == 0 and status["queue"]["ready"] == 8 - claimed
        assert [item["state"] for item in status["listeners"]] == ["stopped"]
        assert proxy.logged_out() >= 1  # the listener said LOGOUT and closed its connection
        webhook = post_webhook(daemon)
        assert webhook.status_code == 503 and webhook.headers["Retry-After"]
        readiness = daemon.get("/readyz")
        assert readiness.status_code == 503 and readiness.json()["failed"] == ["intake"]

        append_subjects(dovecot.port, user, password, ["while-drained 0"])
        assert sample_sum(scrape(daemon), "inboundd_jobs_claimed_total", account="support") == claimed

        code, out, _ = ctl(capsys, daemon, "resume")
        assert code == 0 and out == "running\n"
        assert post_webhook(daemon).status_code == 202
        wait_for(lambda: ledger_counts(pg_dsn) == {"processed": 9}, 60, what="all 9 messages processed")
        wait_for(lambda: status_json(capsys, daemon)[1]["queue"]["in_flight"] == 0, 30, what="queue settled")
        code, status = status_json(capsys, daemon)
        assert code == cli.EXIT_OK, status["health"]
        assert (status["queue"]["ready"], status["queue"]["dead"]) == (0, 0)
        with psycopg.connect(pg_dsn) as conn:
            subjects = [r[0] for r in conn.execute("SELECT subject FROM inbound_messages ORDER BY subject")]
        assert subjects == sorted([f"before {n}" for n in range(8)] + ["while-drained 0"])
    finally:
        proxy.close()


# --------------------------------------------------------------------------- dlq / redrive while running


def test_dlq_and_redrive_with_the_daemon_running(capsys, daemon_factory, redis_url, pg_dsn, dovecot, imap_user,
                                                 tmp_path) -> None:
    """Jobs dead-lettered while their mailbox password was wrong are redriven and stored once fixed."""
    user, password = imap_user
    append_subjects(dovecot.port, user, password, [f"dlq {n}" for n in range(3)])
    # No consumers at first: the listener's 3 jobs are dead-lettered through the real Queue API, as a
    # consumer does after max_attempts, so the DLQ holds real, redrivable jobs.
    section = imap_section(tmp_path, dovecot.port, user, password, start_from='"all"')
    daemon = daemon_factory(redis_url, pg_dsn, daemon_section="consumers = 0", extra_config=section).start()
    wait_for(lambda: status_json(capsys, daemon)[1]["queue"]["ready"] == 3, 30, what="3 jobs enqueued")
    dead_ids = dead_letter_all(redis_url)
    assert len(dead_ids) == 3

    code, out, _ = ctl(capsys, daemon, "dlq", "--json")
    assert code == 0 and sorted(e["job_id"] for e in json.loads(out)) == sorted(dead_ids)
    code, out, _ = ctl(capsys, daemon, "redrive", "--account", "support", "--dry-run")
    assert out == "would move 3 job(s) back to the queue (dry run: nothing changed)\n"
    assert status_json(capsys, daemon)[1]["queue"]["dead"] == 3

    daemon.write_config(daemon.config_text(daemon_section="consumers = 2", extra=section))
    daemon.signal(signal.SIGHUP)  # consumers now run (a live change)
    daemon.wait_event("config.reloaded", timeout=30)
    code, out, _ = ctl(capsys, daemon, "redrive", "--all")
    assert code == 0 and out == "moved 3 job(s) back to the queue\n"
    wait_for(lambda: ledger_counts(pg_dsn) == {"processed": 3}, 60, what="redriven jobs processed")
    code, status = status_json(capsys, daemon)
    assert code == cli.EXIT_OK, status["health"]
    assert (status["queue"]["dead"], status["queue"]["ready"]) == (0, 0)
    assert status["ledger"]["processed"] == 3


def dead_letter_all(redis_url: str) -> list[str]:
    """Claim every ready job and dead-letter it through the real Queue API (as a failing consumer would)."""
    import trio

    from inboundd.config import QueueConfig, RedisConfig
    from inboundd.queue import Queue
    from inboundd.redisio import RedisIO

    async def go() -> list[str]:
        rio = RedisIO.from_config(RedisConfig(url=redis_url))
        try:
            queue = Queue(rio, QueueConfig(), prefix="inboundd")
            claimed = await queue.claim("ops-test", 100, block=0)
            for item in claimed:
                assert await queue.dead_letter("ops-test", item, reason="fetch_failed", error="server said NO",
                                               attempts=8)
            return [item.job.id for item in claimed]
        finally:
            await rio.close()

    return trio.run(go)


# --------------------------------------------------------------------------- control socket


def listening_tcp_ports(pid: int) -> set[int]:
    """TCP ports process *pid* listens on (from /proc: its socket inodes in the LISTEN state)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_control_socket_is_unix_only_with_the_configured_mode(capsys, daemon_factory, redis_url, pg_dsn) -> None:
    import grp
    import stat

    group = grp.getgrgid(os.getgid()).gr_name
    daemon = daemon_factory(redis_url, pg_dsn)
    daemon.write_config(daemon.config_text() + f'mode = "0600"\ngroup = "{group}"\n')
    daemon.start()
    info = os.stat(daemon.control_socket)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_gid == os.getgid()
    assert listening_tcp_ports(daemon.process.pid) == {daemon.port}  # only the public HTTP port
    assert daemon.get("/status").status_code == 404  # the control routes are not on the public server
    assert httpx.post(daemon.url + "/drain", timeout=10).status_code in (404, 405)
    assert daemon.control("GET", "/status").json()["daemon"]["state"] == "running"
    code, out, _ = ctl(capsys, daemon, "resume")  # not drained: resume changes nothing
    assert code == 0 and out == "running\n"
