"""The daemon shell as an operator sees it: a subprocess with a real sd_notify socket."""

from __future__ import annotations

import os
import signal
import statistics
import time


from daemon_harness import DaemonProcess, TableLock, enqueue
from waiting import wait_for


def test_ready_health_and_readiness(daemon_factory, redis_url: str, pg_dsn: str) -> None:
    daemon = daemon_factory(redis_url, pg_dsn).start()
    ready = daemon.notify.seen("READY", "1")[0][1]
    assert ready["MAINPID"] == str(daemon.process.pid)
    assert ready["STATUS"].startswith("running")
    health = daemon.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "alive"
    readiness = daemon.get("/readyz")
    assert readiness.status_code == 200, readiness.text
    assert readiness.json()["checks"] == {"intake": "ok", "postgres": "ok", "redis": "ok"}
    assert os.stat(daemon.control_socket).st_mode & 0o777 == 0o660


def test_a_redis_without_append_only_file_is_reported(daemon_factory, redis_url: str, make_redis, pg_dsn: str) -> None:
    volatile = daemon_factory(redis_url, pg_dsn, name="volatile").start()
    [warning] = volatile.events("redis.not_durable")
    assert warning["level"] == "warning" and warning["appendonly"] == "no"
    durable = daemon_factory(make_redis(persist=True).url, pg_dsn, name="durable").start()
    assert not durable.events("redis.not_durable")


def test_abstract_notify_socket(daemon_factory, redis_url: str, pg_dsn: str) -> None:
    daemon = daemon_factory(redis_url, pg_dsn, abstract_notify=True).start()
    assert daemon.notify.address.startswith("@")
    assert daemon.notify.seen("READY", "1")


def test_readyz_follows_redis_outage(daemon_factory, make_redis, pg_dsn: str) -> None:
    redis = make_redis()
    daemon = daemon_factory(redis.url, pg_dsn).start()
    assert daemon.get("/readyz").status_code == 200
    redis.stop()
    wait_for(lambda: daemon.get("/readyz").status_code == 503, 20, what="/readyz 503 with redis down")
    body = daemon.get("/readyz").json()
    assert body["failed"] == ["redis"]
    assert body["checks"]["redis"].startswith("error:") and body["checks"]["postgres"] == "ok"
    assert daemon.get("/healthz").status_code == 200  # alive, just not ready
    redis.start()
    wait_for(lambda: daemon.get("/readyz").status_code == 200, 20, what="/readyz 200 with redis back")


def test_sigterm_stops_cleanly_within_grace(daemon_factory, redis_url: str, pg_dsn: str) -> None:
    daemon = daemon_factory(redis_url, pg_dsn, daemon_section='consumers = 2\nshutdown_grace = "5s"').start()
    assert daemon.control_socket.exists()
    begin = time.monotonic()
    daemon.signal(signal.SIGTERM)
    status = daemon.wait_exit(timeout=5 + 5)
    assert status == 0, daemon.log_text()[-3000:]
    assert time.monotonic() - begin < 5
    assert daemon.notify.seen("STOPPING", "1")
    assert not daemon.control_socket.exists()
    assert daemon.events("daemon.stopped")[0]["exit_status"] == 0


def _imap_job(uid: int):
    from inboundd import jobs

    return jobs.new_job(jobs.ImapPointer(account="support", folder="INBOX", uidvalidity=1, uid=uid), tenant="t")


def _stall_one_job(daemon: DaemonProcess, redis_url: str, pg_dsn: str) -> TableLock:
    """A job in flight that cannot finish: its ledger claim waits on a lock the test holds."""
    stalled = TableLock(pg_dsn, "inbound_ledger")
    enqueue(redis_url, [_imap_job(1)])
    wait_for(lambda: stalled.waiters() >= 1, 20, what="a consumer blocked in its ledger claim")
    return stalled


def test_second_signal_exits_at_once(daemon_factory, redis_url: str, pg_dsn: str) -> None:
    daemon = daemon_factory(redis_url, pg_dsn, daemon_section='consumers = 1\nshutdown_grace = "60s"').start()
    stalled = _stall_one_job(daemon, redis_url, pg_dsn)
    try:
        daemon.signal(signal.SIGINT)
        daemon.wait_event("daemon.stopping", timeout=10)  # draining, waiting up to 60 s for the stalled job
        begin = time.monotonic()
        daemon.signal(signal.SIGINT)
        assert daemon.wait_exit(timeout=15) == 130
        assert time.monotonic() - begin < 10
        assert not daemon.control_socket.exists()
    finally:
        stalled.release()


def test_grace_expiry_exits_and_leaves_the_job_leased(daemon_factory, redis_url: str, pg_dsn: str) -> None:
    daemon = daemon_factory(redis_url, pg_dsn, daemon_section='consumers = 1\nshutdown_grace = "2s"').start()
    stalled = _stall_one_job(daemon, redis_url, pg_dsn)
    try:
        begin = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(timeout=20) == 0, daemon.log_text()[-3000:]
        assert 2 <= time.monotonic() - begin < 10
        assert daemon.events("daemon.grace_expired")
    finally:
        stalled.release()
    import redis

    with redis.Redis.from_url(redis_url) as client:  # still in the stream, pending: reclaimed after restart
        assert client.xlen("{inboundd}:stream") == 1
        assert client.xpending("{inboundd}:stream", "inboundd")["pending"] == 1


def test_sighup_applies_a_valid_change(daemon_factory, redis_url: str, pg_dsn: str) -> None:
    daemon = daemon_factory(redis_url, pg_dsn, daemon_section="consumers = 1").start()
    assert daemon.control("GET", "/status").json()["consumers"]["count"] == 1
    daemon.write_config(daemon.config_text(daemon_section='consumers = 3\nlog_level = "debug"'))
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("config.reloaded", timeout=20)
    assert daemon.notify.seen("RELOADING", "1")
    daemon.wait_ready(after=1, timeout=10)  # READY=1 again after the reload
    wait_for(lambda: daemon.control("GET", "/status").json()["consumers"]["count"] == 3, 10, what="3 consumers")
    assert daemon.get("/readyz").status_code == 200


def test_sighup_reports_what_needs_a_restart(daemon_factory, redis_url: str, pg_dsn: str) -> None:
    daemon = daemon_factory(redis_url, pg_dsn).start()
    text = daemon.config_text().replace('graceful_timeout = "1s"', 'graceful_timeout = "2s"')
    daemon.write_config(text)
    daemon.signal(signal.SIGHUP)
    events = daemon.wait_event("config.restart_required", timeout=20)
    assert [e["key"] for e in events] == ["http.graceful_timeout"]


def test_sighup_with_an_invalid_file_keeps_running(daemon_factory, redis_url: str, pg_dsn: str) -> None:
    daemon = daemon_factory(redis_url, pg_dsn, daemon_section="consumers = 2").start()
    daemon.write_config(daemon.config_text(daemon_section='consumers = "many"\nshutdown_grace = "soon"\nfoo = 1'))
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("config.reload_failed", timeout=20)
    problems = [e["problem"] for e in daemon.events("config.reload_rejected")]
    assert len(problems) == 3, problems
    assert {p.split(":")[0] for p in problems} == {"daemon.consumers", "daemon.shutdown_grace", "daemon.foo"}
    assert daemon.process.poll() is None
    assert daemon.get("/readyz").status_code == 200
    assert daemon.control("GET", "/status").json()["consumers"]["count"] == 2


def test_watchdog_pings_at_half_the_timeout(daemon_factory, redis_url: str, pg_dsn: str) -> None:
    daemon = daemon_factory(redis_url, pg_dsn, env={"WATCHDOG_USEC": "400000"})
    daemon.start()
    wait_for(lambda: len(daemon.notify.seen("WATCHDOG", "1")) >= 12, 20, what="12 watchdog pings")
    times = [t for t, _ in daemon.notify.seen("WATCHDOG", "1")]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert 0.15 <= statistics.median(gaps) <= 0.3, gaps
    assert max(gaps) < 0.4  # never reaches the 0.4 s timeout


def test_watchdog_for_another_pid_is_ignored(daemon_factory, redis_url: str, pg_dsn: str) -> None:
    daemon = daemon_factory(redis_url, pg_dsn, env={"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}).start()
    daemon.get("/healthz")
    assert not daemon.notify.seen("WATCHDOG")


def test_sigterm_while_waiting_for_postgresql_at_start(daemon_factory, redis_url: str) -> None:
    from services import free_port

    absent = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    daemon = daemon_factory(redis_url, absent).start(wait_ready=False)
    daemon.wait_event("postgres.down", timeout=30)
    begin = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(timeout=15) == 0, daemon.log_text()[-3000:]
    assert time.monotonic() - begin < 5
    assert not daemon.notify.seen("READY", "1")


# --------------------------------------------------------------------------- the bad day at start


def _errors_and_tracebacks(daemon: DaemonProcess) -> tuple[list[dict], list[str]]:
    return ([e for e in daemon.events() if e["level"] in ("error", "critical")],
            [line for line in daemon.log_text().splitlines() if "Traceback" in line])


def test_an_http_port_in_use_is_one_line_naming_the_key_and_address(daemon_factory, redis_url: str,
                                                                     pg_dsn: str) -> None:
    import socket

    daemon = daemon_factory(redis_url, pg_dsn)
    with socket.create_server(("127.0.0.1", daemon.port)):      # someone else listens there
        daemon.start(wait_ready=False)
        assert daemon.wait_exit(timeout=30) == 3
    errors, tracebacks = _errors_and_tracebacks(daemon)
    assert tracebacks == [] and len(errors) == 1, daemon.log_text()
    [error] = errors
    assert (error["event"], error["key"], error["address"], error["error"]) == (
        "daemon.cannot_listen", "http.listen", f"127.0.0.1:{daemon.port}", "address already in use")
    assert error["problem"] == f"http.listen: cannot listen on 127.0.0.1:{daemon.port}: address already in use"
    assert not daemon.control_socket.exists() and not daemon.notify.seen("READY", "1")


def test_a_control_socket_in_use_is_one_line_and_the_other_daemon_keeps_running(daemon_factory, redis_url: str,
                                                                                pg_dsn: str) -> None:
    first = daemon_factory(redis_url, pg_dsn, name="first").start()
    second = daemon_factory(redis_url, pg_dsn, name="second")
    second.write_config(second.config_text().replace(str(second.control_socket), str(first.control_socket)))
    second.start(wait_ready=False)
    assert second.wait_exit(timeout=30) == 3
    errors, tracebacks = _errors_and_tracebacks(second)
    assert tracebacks == [] and [(e["key"], e["address"]) for e in errors] == [
        ("control.socket", str(first.control_socket))]
    assert "another inboundd is running on it" in errors[0]["problem"]
    assert first.control("GET", "/status").json()["daemon"]["state"] == "running"  # untouched


def test_postgresql_down_at_start_serves_health_readiness_and_status_from_the_first_second(
        daemon_factory, redis_url: str, pg_server, pg_dsn: str, capsys) -> None:
    from daemon_harness import TcpForwarder
    from inboundd import cli
    from services import free_port

    port = free_port()
    later = TcpForwarder(port, pg_server.port)          # PostgreSQL "comes up" when this starts
    daemon = daemon_factory(redis_url, pg_dsn.replace(f":{pg_server.port}/", f":{port}/"))
    daemon.start(wait_ready=False)
    try:
        health = wait_for(lambda: daemon.get("/healthz", timeout=2), 15, what="/healthz while starting")
        assert health.status_code == 200 and health.json()["state"] == "starting"
        daemon.wait_event("postgres.down")
        ready = daemon.get("/readyz")
        body = ready.json()
        assert ready.status_code == 503 and body["state"] == "starting"
        assert "postgres" in body["failed"] and "Connection refused" in body["checks"]["postgres"], body
        assert body["checks"]["redis"] == "ok"
        wait_for(lambda: "waiting for postgres" in daemon.control("GET", "/status").json()["daemon"].get(
            "detail", ""), 15, what="the status saying what the daemon waits for")
        code = cli.main(["-c", str(daemon.config_path), "status"])
        first_line = capsys.readouterr().out.splitlines()[0]
        assert code == cli.EXIT_FAILED
        assert first_line.startswith("starting: waiting for postgres (last error: OperationalError: connection "
                                     "failed: ") and "Connection refused" in first_line, first_line

        wait_for(lambda: daemon.notify.seen("STATUS") and any(
            m["STATUS"].startswith("starting: waiting for postgres") for _, m in daemon.notify.seen("STATUS")),
            15, what="systemd STATUS saying what it waits for")
        later.start()
        daemon.wait_ready(timeout=60)
        daemon.wait_event("daemon.ready")
        assert daemon.get("/readyz").status_code == 200
    finally:
        daemon.stop()
        later.stop()
    text = daemon.log_text()
    # The pool's own retries (several a second, two lines each) are not in the log; the outage is, once.
    assert "error connecting in" not in text and "reconnection attempt" not in text
    assert [e["event"] for e in daemon.events() if e["event"].startswith("postgres.")] == [
        "postgres.down", "postgres.up"]
    [down] = daemon.events("postgres.down")
    assert down["level"] == "warning" and "Connection refused" in down["error"] and "\n" not in down["error"]


def test_redis_down_is_logged_by_its_changes_and_ready_only_when_ready(daemon_factory, make_redis,
                                                                       pg_dsn: str) -> None:
    redis = make_redis()
    redis.stop()                                          # down from the start
    daemon = daemon_factory(redis.url, pg_dsn, daemon_section='consumers = 3\nshutdown_grace = "5s"').start()
    [not_ready] = daemon.wait_event("daemon.not_ready")
    assert not_ready["failed"] == "redis" and daemon.get("/readyz").status_code == 503
    assert not daemon.events("daemon.ready")
    daemon.wait_event("redis.down")
    redis.start()
    [ready] = daemon.wait_event("daemon.ready", timeout=30)
    assert daemon.get("/readyz").status_code == 200
    [up] = daemon.wait_event("redis.up")
    assert up["failures"] >= 1 and up["last_error"]

    redis.stop()                                          # and an outage while running
    wait_for(lambda: len(daemon.events("redis.down")) == 2, 20, what="the second outage logged")
    wait_for(lambda: daemon.get("/readyz").status_code == 503, 20, what="/readyz 503")
    redis.start()
    wait_for(lambda: len(daemon.events("redis.up")) == 2, 30, what="redis back, logged")
    daemon.stop()
    warnings = [e for e in daemon.events() if e["level"] == "warning"]
    # Three consumers, the reclaim timer and /readyz all found Redis down, again and again:
    # two outages are two lines (no minute passed, so no still_down), and nothing else repeats them.
    assert [e["event"] for e in warnings if e["event"].startswith("redis.")] == ["redis.down", "redis.down"]
    assert not [e for e in warnings if e["event"] in ("consumer.redis_error", "reclaim.failed",
                                                      "queue.redis_unavailable")]
    assert ready["ts"] >= up["ts"]


def test_a_killed_daemon_takes_its_jobs_back_at_restart(daemon_factory, redis_url: str, pg_dsn: str) -> None:
    # The lease is long: only the restarted daemon itself can bring the job back this fast.
    daemon = daemon_factory(redis_url, pg_dsn, daemon_section="consumers = 1",
                            extra_config='[queue]\nlease = "10m"\n').start()
    stalled = _stall_one_job(daemon, redis_url, pg_dsn)
    daemon.kill()
    stalled.release()
    daemon.start(wait_ready=False)
    daemon.wait_ready(after=1)
    [take_back] = daemon.wait_event("consumer.take_back", timeout=10)
    assert take_back["jobs"] == 1
    # Handled again by the new incarnation, one attempt counted for the worker it lost.
    handled = daemon.wait_event("job.failed", timeout=30)[0]
    assert handled["attempt"] == 1 and "not configured" in handled["error"]


def test_a_renamed_key_is_logged_as_deprecated_at_start_and_reload(daemon_factory, redis_url: str, pg_dsn: str,
                                                                  tmp_path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    account = (f'[[imap]]\nid = "old"\nhost = "127.0.0.1"\nport = 1\ntls = "none"\nusername = "u"\n'
               f'password_file = "{tmp_path / "pw"}"\nlease = 0\nnoop_interval = "2m"\n')
    daemon = daemon_factory(redis_url, pg_dsn, extra_config=account).start()
    [event] = daemon.wait_event("config.deprecated", timeout=20)
    assert event["problem"].startswith("imap[0].noop_interval: renamed to examine_interval")
    assert event["file"] == str(daemon.config_path)
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("config.reloaded", timeout=20)
    assert len(daemon.events("config.deprecated")) == 2
