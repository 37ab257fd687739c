"""Operating deliveries: inboundctl deliveries / redeliver / status, configuration errors, and the real daemon.

The CLI runs in-process through ``cli.main`` with the daemon stopped; the
last tests run the daemon as a subprocess with an IMAP account on the
suite's Dovecot and a webhook target on a loopback receiver: SIGKILL with
deliveries in flight loses none, and a receiver that is down leaves the
daemon ready (mail still flows in) but degraded in ``inboundctl status``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from standardwebhooks import Webhook

from inboundd import cli
from daemon_harness import imap_section, wait_idle
from deliver_helpers import SECRET, raw_message, store_messages, webhook_target
from receiver import Answer, Receiver
from imap_helpers import append_subjects as append
from waiting import wait_for


def write_config(directory: Path, redis_url: str, pg_dsn: str, extra: str = "") -> Path:
    path = directory / "inboundd.toml"
    path.write_text(f'[redis]\nurl = "{redis_url}"\n[postgres]\ndsn = "{pg_dsn}"\n'
                    f'[control]\nsocket = "{directory / "control.sock"}"\n{extra}')
    return path


def deliver_section(directory: Path, url: str, target: str = "helpdesk", **settings: str) -> str:
    secret = directory / f"{target}.whsec"
    secret.write_text(SECRET + "\n")
    values = {"id": f'"{target}"', "kind": '"webhook"', "url": f'"{url}"', "secret_file": f'"{secret}"',
              "backoff_base": '"100ms"', "backoff_cap": '"500ms"'}
    values.update(settings)
    return "[[deliver]]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def delivery_rows(pg_dsn: str) -> list[tuple[str, str, str, int]]:
    with psycopg.connect(pg_dsn) as conn:
        return conn.execute("SELECT delivery_id, target, status, attempts FROM inbound_deliveries ORDER BY id").fetchall()


def seed(pg_dsn: str) -> list[str]:
    """Three deliveries to helpdesk (the first dead, with an error) and one pending to other; their ids."""
    with psycopg.connect(pg_dsn) as conn:
        store_messages(conn, [raw_message(n) for n in range(3)], [webhook_target("http://h", target_id="helpdesk")])
        store_messages(conn, [raw_message(9)], [webhook_target("http://o", target_id="other")])
        conn.execute("UPDATE inbound_deliveries SET status = 'dead', attempts = 12, last_status = 500,"
                     " last_error = 'HTTP 500: boom', last_attempt_at = now() WHERE id = 1")
    return [row[0] for row in delivery_rows(pg_dsn)]


# --------------------------------------------------------------------------- inboundctl, daemon stopped


def test_deliveries_lists_pending_and_dead_with_the_daemon_stopped(capsys, tmp_path, redis_url, pg_dsn) -> None:
    path = write_config(tmp_path, redis_url, pg_dsn, deliver_section(tmp_path, "http://h"))
    assert run(capsys, "-c", str(path), "migrate")[0] == 0
    ids = seed(pg_dsn)
    code, out, _ = run(capsys, "-c", str(path), "deliveries")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:-1]] == ids[1:]
    assert out.splitlines()[-1] == "3 pending deliveries shown"
    code, out, _ = run(capsys, "-c", str(path), "deliveries", "--dead", "--json")
    [dead] = json.loads(out)
    assert (dead["delivery_id"], dead["target"], dead["attempts"], dead["last_status"], dead["last_error"]) == \
        (ids[0], "helpdesk", 12, 500, "HTTP 500: boom")
    code, out, _ = run(capsys, "-c", str(path), "deliveries", "--target", "other")
    assert ids[3] in out and ids[1] not in out
    assert run(capsys, "-c", str(path), "deliveries", "--target", "nobody")[1] == "no pending deliveries\n"


def test_redeliver_sends_dead_deliveries_again_under_the_same_id(capsys, tmp_path, redis_url, pg_dsn) -> None:
    path = write_config(tmp_path, redis_url, pg_dsn, deliver_section(tmp_path, "http://h"))
    assert run(capsys, "-c", str(path), "migrate")[0] == 0
    ids = seed(pg_dsn)
    assert run(capsys, "-c", str(path), "redeliver")[0] == cli.EXIT_USAGE
    assert run(capsys, "-c", str(path), "redeliver", "--all", ids[0])[0] == cli.EXIT_USAGE
    code, out, _ = run(capsys, "-c", str(path), "redeliver", "--all", "--dry-run")
    assert code == 0 and out.startswith("would send 1 dead delivery")
    assert delivery_rows(pg_dsn)[0][2] == "dead"
    code, out, err = run(capsys, "-c", str(path), "redeliver", ids[0], ids[1], "msg_unknown")
    assert code == cli.EXIT_FAILED and out.startswith("1 dead delivery(ies) pending again")
    assert f"not dead (or unknown): {ids[1]}, msg_unknown" in err
    assert delivery_rows(pg_dsn)[0] == (ids[0], "helpdesk", "pending", 0)


def test_status_reports_deliveries_and_degrades_on_dead_ones(capsys, tmp_path, redis_url, pg_dsn) -> None:
    path = write_config(tmp_path, redis_url, pg_dsn, deliver_section(tmp_path, "http://h", pending_alert='"1h"'))
    assert run(capsys, "-c", str(path), "migrate")[0] == 0
    seed(pg_dsn)
    code, out, _ = run(capsys, "-c", str(path), "status", "--json")
    status = json.loads(out)
    deliveries = status["deliveries"]
    assert (deliveries["pending"], deliveries["dead"]) == (3, 1)
    assert 0 <= deliveries["oldest_pending_age"] < 60
    assert [(t["target"], t["pending"], t["dead"]) for t in deliveries["targets"]] == [("helpdesk", 2, 1),
                                                                                      ("other", 1, 0)]
    problems = status["health"]["problems"]
    assert any("deliveries to helpdesk: 1 dead" in p for p in problems)
    assert any("deliveries to other: 1 pending, but no [[deliver]] target 'other'" in p for p in problems)
    code, out, _ = run(capsys, "-c", str(path), "status")
    assert "DELIVERIES" in out and out.split("DELIVERIES", 1)[1].splitlines()[2].split()[:3] == ["helpdesk", "2", "1"]


# --------------------------------------------------------------------------- configuration errors


def check_config(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "inboundd.daemon", "--check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def test_a_bad_secret_or_handler_is_a_configuration_error_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "bad.whsec").write_text("not-a-whsec\n")
    (tmp_path / "inbound_app.py").write_text("import no_such_dependency_xyz\n")
    path = tmp_path / "inboundd.toml"
    path.write_text(
        '[[deliver]]\nid = "hook"\nkind = "webhook"\nurl = "https://app.example/in"\nsecret_file = "bad.whsec"\n'
        '[[deliver]]\nid = "app"\nkind = "python"\nhandler = "inbound_app:handle"\n'
        '[[deliver]]\nid = "rails"\nkind = "action_mailbox"\nurl = "ftp://x"\n'
    )
    result = check_config(path, {"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2
    assert 'deliver[2].url: expected an http:// or https:// URL' in result.stderr
    path.write_text(path.read_text().split("[[deliver]]\nid = \"rails\"")[0])
    result = check_config(path, {"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2, result.stdout
    assert 'deliver[0].secret_file: expected a Standard Webhooks secret "whsec_<base64>"' in result.stderr
    assert ("deliver[1].handler: cannot import 'inbound_app' for handler 'inbound_app:handle': "
            "ModuleNotFoundError: No module named 'no_such_dependency_xyz'") in result.stderr
    (tmp_path / "bad.whsec").write_text(SECRET)
    (tmp_path / "inbound_app.py").write_text("def handle(conn, inbound):\n    pass\n")
    result = check_config(path, {"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0 and "2 deliver target(s)" in result.stdout, result.stderr


# --------------------------------------------------------------------------- the real daemon


def test_sigkill_with_deliveries_in_flight_loses_none(daemon_factory, redis_url, pg_dsn, dovecot, imap_user,
                                                      tmp_path: Path) -> None:
    user, password = imap_user
    receiver = Receiver().start()
    receiver.hold()
    try:
        config = (imap_section(tmp_path, dovecot.port, user, password)
                  + deliver_section(tmp_path, receiver.url + "/inbound", concurrency="3", timeout='"30s"'))
        daemon = daemon_factory(redis_url, pg_dsn, extra_config=config)
        daemon.start()
        wait_idle(daemon)
        append(dovecot.port, user, password, [f"ticket {n}" for n in range(5)])
        wait_for(lambda: len(delivery_rows(pg_dsn)) == 5, 30, what="five messages stored, five deliveries owed")
        receiver.wait_waiting(3)  # three requests in flight, unanswered
        in_flight = {request.headers["webhook-id"] for request in receiver.arrivals}
        daemon.kill()
        receiver.release()  # the killed daemon never reads these answers
        daemon.start(wait_ready=False)
        daemon.wait_ready(after=1)
        wait_for(lambda: [row[2] for row in delivery_rows(pg_dsn)] == ["delivered"] * 5, 30,
                 what="every delivery made after the restart")
        taken_back = daemon.wait_event("delivery.taken_back")[0]
        assert taken_back["rows"] >= 3
        rows = delivery_rows(pg_dsn)
        answered = receiver.received()
        by_id: dict[str, int] = {}
        for request in answered:
            assert Webhook(SECRET).verify(request.body, request.headers)["data"]["subject"].startswith("ticket ")
            by_id[request.headers["webhook-id"]] = by_id.get(request.headers["webhook-id"], 0) + 1
        assert set(by_id) == {row[0] for row in rows}  # none lost; each with the id the row has
        assert in_flight <= {i for i, n in by_id.items() if n == 2}  # the ones in flight were sent again, same id
    finally:
        receiver.close()


def test_a_receiver_down_keeps_the_daemon_ready_and_status_degraded(daemon_factory, redis_url, pg_dsn, dovecot,
                                                                     imap_user, tmp_path: Path, capsys) -> None:
    user, password = imap_user
    receiver = Receiver().start()
    receiver.stop()  # down: connection refused
    try:
        config = imap_section(tmp_path, dovecot.port, user, password) + deliver_section(tmp_path, receiver.url)
        daemon = daemon_factory(redis_url, pg_dsn, extra_config=config)
        daemon.start()
        wait_idle(daemon)
        append(dovecot.port, user, password, ["while the helpdesk is down"])
        wait_for(lambda: delivery_rows(pg_dsn), 30, what="the message stored, its delivery owed")
        wait_for(lambda: daemon.events("delivery.target_paused"), 30, what="the target held back")
        ready = daemon.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        code, out, _ = run(capsys, "-c", str(daemon.config_path), "status", "--json")
        status = json.loads(out)
        assert code == cli.EXIT_FAILED and status["deliveries"]["pending"] == 1
        [worker] = status["deliverer"]["targets"]
        assert worker["target"] == "helpdesk" and worker["state"] in ("paused", "probing")
        assert any(p.startswith("deliveries to helpdesk held back: cannot connect") for p in status["health"]["problems"])
        metrics_text = daemon.get("/metrics").text
        assert 'inboundd_deliveries_pending{target="helpdesk"} 1.0' in metrics_text
        assert 'inboundd_deliveries_failed_total{outcome="retry",target="helpdesk"}' in metrics_text
        receiver.answer = lambda request: Answer(204)
        receiver.start()
        wait_for(lambda: [row[2] for row in delivery_rows(pg_dsn)] == ["delivered"], 30, what="delivered once back")
        assert 'inboundd_deliveries_delivered_total{target="helpdesk"} 1.0' in daemon.get("/metrics").text
    finally:
        receiver.close()


# --------------------------------------------------------------------------- the README's receiver


def readme_receiver() -> str:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Getting mail into your application", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    return "\n".join(line.removeprefix("  ") for line in code.splitlines())


def test_the_readme_receiver_verifies_and_dedupes(tmp_path: Path) -> None:
    import httpx
    import time

    from inboundd.deliver.signing import parse_secret
    from inboundd.deliver.wire import webhook_request
    from services import free_port

    code = readme_receiver()
    assert len(code.splitlines()) == 10, code
    port = free_port()
    (tmp_path / "receiver.py").write_text(code.replace("8080", str(port)))
    (tmp_path / "helpdesk.whsec").write_text(SECRET + "\n")
    process = subprocess.Popen([sys.executable, "-u", "receiver.py"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        def post(delivery_id: str, subject: str, key: bytes = parse_secret(SECRET)) -> int:
            body = json.dumps({"type": "message.received", "data": {"subject": subject,
                                                                     "from": {"address": "ann@example.com"}}})
            request = webhook_request(f"http://127.0.0.1:{port}/", key, delivery_id, int(time.time()),
                                      body.encode(), "test")
            try:
                return httpx.post(request.url, content=request.body, headers=list(request.headers)).status_code
            except httpx.HTTPError:
                return 0  # the receiver dropped a request it could not verify

        wait_for(lambda: post("msg_1", "first") == 204, 30, what="the README receiver answering")
        assert post("msg_1", "first") == 204  # sent again: acknowledged, not acted on twice
        assert post("msg_2", "second") == 204
        assert post("msg_3", "forged", key=b"k" * 32) != 204
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=10)
    assert out.splitlines() == ["ann@example.com first", "ann@example.com second"]


def test_a_python_handler_is_imported_at_start_and_again_on_sighup(daemon_factory, redis_url, pg_dsn, dovecot,
                                                                   imap_user, tmp_path: Path) -> None:
    import signal

    user, password = imap_user
    app = tmp_path / "app"
    app.mkdir()
    module = app / "inbound_app.py"

    def handler_version(version: str) -> None:
        module.write_text("def handle(conn, inbound):\n"
                          "    conn.execute('INSERT INTO app_log (version, subject) VALUES (%s, %s)',\n"
                          f"                 ({version!r}, inbound.message.subject))\n")

    def app_log() -> list[tuple[str, str]]:
        with psycopg.connect(pg_dsn) as conn:
            return conn.execute("SELECT version, subject FROM app_log ORDER BY subject").fetchall()

    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE app_log (version text, subject text)")
    handler_version("v1")
    config = (imap_section(tmp_path, dovecot.port, user, password)
              + '[[deliver]]\nid = "app"\nkind = "python"\nhandler = "inbound_app:handle"\n')
    daemon = daemon_factory(redis_url, pg_dsn, extra_config=config,
                            env={"PYTHONPATH": str(app), "PYTHONDONTWRITEBYTECODE": "1"})
    daemon.start()
    wait_idle(daemon)
    append(dovecot.port, user, password, ["a first"])
    wait_for(lambda: app_log() == [("v1", "a first")], 30, what="the handler's row, committed with the message")

    handler_version("v2")
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("config.reloaded", timeout=20)
    append(dovecot.port, user, password, ["b second"])
    wait_for(lambda: app_log() == [("v1", "a first"), ("v2", "b second")], 30, what="the reloaded handler used")

    module.write_text("import no_such_dependency_xyz\n")
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("config.reload_failed", timeout=20)
    [problem] = [e["problem"] for e in daemon.events("config.reload_rejected")]
    assert problem.startswith("deliver[0].handler: cannot import 'inbound_app' for handler 'inbound_app:handle'")
    append(dovecot.port, user, password, ["c third"])  # the running handler stays in service
    wait_for(lambda: len(app_log()) == 3, 30, what="the third message handled")
    assert app_log()[-1] == ("v2", "c third") and daemon.process.poll() is None
