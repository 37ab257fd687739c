"""inboundctl as an operator uses it: real Redis and PostgreSQL, the daemon stopped.

Commands run in-process through ``cli.main`` (each one its own ``trio.run``,
as from a shell); a few run the installed console script to prove the entry
point. Tests with a running daemon live in test_ops_daemon.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from daemon_harness import seed_queue
from inboundd import cli
from services import free_port

ROOT = Path(__file__).resolve().parent.parent
INBOUNDCTL = Path(sys.executable).parent / "inboundctl"


def write_config(directory: Path, redis_url: str, pg_dsn: str, extra: str = "") -> Path:
    path = directory / "inboundd.toml"
    path.write_text(
        f'[redis]\nurl = "{redis_url}"\nsocket_timeout = "2s"\n'
        f'[postgres]\ndsn = "{pg_dsn}"\nconnect_timeout = "2s"\n'
        f'[control]\nsocket = "{directory / "control.sock"}"\n{extra}'
    )
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- command line


def test_help_lists_every_command_with_examples(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert f"\n    {name} " in text, name
    assert "examples:" in text and "exit status:" in text
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit):
            cli.main([name, "--help"])
        sub = capsys.readouterr().out
        assert f"usage: inboundctl {name}" in sub
        assert "examples:\n  inboundctl " + name in sub, name


def test_console_script_version() -> None:
    result = subprocess.run([str(INBOUNDCTL), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    from inboundd import __version__

    assert result.stdout.strip() == f"inboundctl {__version__}"


def test_missing_config_is_one_line_naming_the_file(capsys, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    code, out, err = run(capsys, "-c", str(missing), "status")
    assert code == cli.EXIT_USAGE and out == ""
    assert err == f"inboundctl: {missing}: cannot read configuration file: No such file or directory\n"


def test_config_from_environment_and_after_the_command(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("INBOUNDD_CONFIG", str(tmp_path / "env.toml"))
    code, _, err = run(capsys, "dlq")
    assert code == cli.EXIT_USAGE and str(tmp_path / "env.toml") in err
    code, _, err = run(capsys, "dlq", "-c", str(tmp_path / "flag.toml"))
    assert code == cli.EXIT_USAGE and str(tmp_path / "flag.toml") in err


def test_invalid_config_names_the_key_and_counts_the_rest(capsys, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[queue]\nlease = "forever"\nmax_attempts = 0\n')
    code, _, err = run(capsys, "-c", str(path), "status")
    assert code == cli.EXIT_USAGE
    assert err.count("\n") == 1 and "queue." in err and "and 1 more problem(s)" in err


def test_redrive_needs_exactly_one_selection(capsys, tmp_path: Path, redis_url: str, pg_dsn: str) -> None:
    path = write_config(tmp_path, redis_url, pg_dsn)
    code, _, err = run(capsys, "-c", str(path), "redrive")
    assert code == cli.EXIT_USAGE and "exactly one of --all" in err
    code, _, err = run(capsys, "-c", str(path), "redrive", "--all", "--account", "a")
    assert code == cli.EXIT_USAGE


# --------------------------------------------------------------------------- migrate


def test_migrate_applies_then_reports_up_to_date(capsys, tmp_path: Path, redis_url: str, pg_dsn: str) -> None:
    from inboundd.store.migrate import available

    path = write_config(tmp_path, redis_url, pg_dsn)
    latest = available()[-1].version
    code, out, _ = run(capsys, "-c", str(path), "migrate")
    assert code == 0 and out.startswith("applied migration(s) 1") and f"version {latest}" in out
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT max(version) FROM inbound_schema_version").fetchone()[0] == latest
        assert conn.execute("SELECT to_regclass('inbound_cursors') IS NOT NULL").fetchone()[0]
    code, out, _ = run(capsys, "-c", str(path), "migrate")
    assert code == 0 and out == f"schema is up to date at version {latest} (this build knows up to {latest})\n"


def test_migrate_refuses_a_newer_schema(capsys, tmp_path: Path, redis_url: str, pg_dsn: str) -> None:
    path = write_config(tmp_path, redis_url, pg_dsn)
    assert run(capsys, "-c", str(path), "migrate")[0] == 0
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO inbound_schema_version (version, name) VALUES (9999, 'future')")
    code, _, err = run(capsys, "-c", str(path), "migrate")
    assert code == cli.EXIT_FAILED and "upgrade inboundd" in err and err.count("\n") == 1


def test_postgres_unreachable_says_where(capsys, tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    path = write_config(tmp_path, redis_url, f"postgresql://inboundd:secret@127.0.0.1:{port}/mail")
    code, _, err = run(capsys, "-c", str(path), "migrate")
    assert code == cli.EXIT_UNAVAILABLE
    assert err.startswith(f"inboundctl: PostgreSQL at 127.0.0.1:{port}/mail unreachable: ")
    assert "secret" not in err and err.count("\n") == 1


# --------------------------------------------------------------------------- control socket errors


def test_drain_without_daemon_is_not_running(capsys, tmp_path: Path, redis_url: str, pg_dsn: str) -> None:
    path = write_config(tmp_path, redis_url, pg_dsn)
    code, _, err = run(capsys, "-c", str(path), "drain")
    assert code == cli.EXIT_NOT_RUNNING
    assert err == f"inboundctl: daemon is not running: no control socket at {tmp_path / 'control.sock'}\n"


def test_stale_socket_is_not_running(capsys, tmp_path: Path, redis_url: str, pg_dsn: str) -> None:
    path = write_config(tmp_path, redis_url, pg_dsn)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "control.sock"))
    stale.close()  # the file stays, nobody listens: a crashed daemon's leftover
    code, _, err = run(capsys, "-c", str(path), "resume")
    assert code == cli.EXIT_NOT_RUNNING and "stale socket" in err


def _run_as_nobody(argv: list[str]) -> tuple[int, str]:
    """``cli.main(argv)`` in a forked child that dropped root for user nobody; (exit status, stderr)."""
    import httpx  # noqa: F401  (imported before the fork: nobody cannot read root's interpreter tree)
    import pwd

    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 99
        try:
            os.close(read_end)
            sys.stderr = os.fdopen(write_end, "w")  # pytest captures sys.stderr, not fd 2
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            code = cli.main(argv)
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        err = pipe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


def test_socket_permission_denied_names_socket_and_group(tmp_path: Path, redis_url: str, pg_dsn: str) -> None:
    """An operator outside the socket's group gets one line saying so (inboundctl run as user nobody)."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root to run inboundctl as another user")
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="inboundctl-perm-", dir="/tmp"))  # pytest's tmp is root-only
    directory.chmod(0o755)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        path = write_config(directory, redis_url, pg_dsn, extra='group = "root"\nmode = "0660"\n')
        path.chmod(0o644)
        listener.bind(str(directory / "control.sock"))
        listener.listen()
        os.chmod(directory / "control.sock", 0o660)
        code, err = _run_as_nobody(["-c", str(path), "drain"])
    finally:
        listener.close()
        shutil.rmtree(directory)
    assert code == cli.EXIT_UNAVAILABLE, err
    assert err == (
        f"inboundctl: permission denied on control socket {directory / 'control.sock'} "
        "(run as root or a member of group 'root')\n"
    )


def test_a_daemon_that_does_not_answer_is_not_reported_as_stopped(capsys, tmp_path: Path, redis_url: str,
                                                                  pg_dsn: str, monkeypatch) -> None:
    path = write_config(tmp_path, redis_url, pg_dsn)
    monkeypatch.setattr(cli, "CONTROL_TIMEOUT", 0.5)
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # listens, never answers
    try:
        hung.bind(str(tmp_path / "control.sock"))
        hung.listen()
        code, out, err = run(capsys, "-c", str(path), "status")
    finally:
        hung.close()
    assert code == cli.EXIT_UNAVAILABLE  # not 3: monitoring must not take a hung daemon for a stopped one
    assert err.strip().endswith(f"daemon is not answering on {tmp_path / 'control.sock'} (no reply within 0.5s)")


def test_redact_and_describe_never_show_passwords() -> None:
    assert cli.redact_url("redis://:pw@h:6379/0") == "redis://***@h:6379/0"
    assert cli.redact_url("redis://h:6379/0") == "redis://h:6379/0"
    assert cli.redact_url("unix:///run/redis.sock?db=0") == "unix:///run/redis.sock?db=0"
    assert cli.redact_url("unix:///run/redis.sock?db=0&password=pw") == "unix:///run/redis.sock?db=0&password=***"
    assert cli.describe_dsn("postgresql://u:pw@db.example:5433/mail") == "PostgreSQL at db.example:5433/mail"
    assert "pw" not in cli.describe_dsn("host=db password=pw dbname=mail")


def test_ledger_summary_folds_rows() -> None:
    summary = cli.ledger_summary([
        ("processed", None, 5), ("duplicate", "message_id", 2), ("skipped", "gone", 1),
        ("skipped", "oversize", 3), ("skipped", None, 1), ("failed", "boom", 4), ("processing", None, 1),
    ])
    assert summary == {"window": "1h", "processed": 5, "duplicate": 2, "failed": 4, "processing": 1,
                       "skipped": {"gone": 1, "oversize": 3, "unspecified": 1}}


# --------------------------------------------------------------------------- queue state, daemon stopped


def insert_ledger(pg_dsn: str, rows: list[tuple[str, str | None]]) -> None:
    with psycopg.connect(pg_dsn) as conn:
        for n, (status, reason) in enumerate(rows):
            conn.execute(
                "INSERT INTO inbound_ledger (tenant, account, identity, provider, status, reason, job_id)"
                " VALUES ('t', 'support', %s, 'imap', %s, %s, %s)",
                (f"imap:INBOX:7:{n}", status, reason, f"job{n}"),
            )


def test_status_with_daemon_stopped_still_shows_queue_and_ledger(capsys, tmp_path: Path, redis_url: str,
                                                                 pg_dsn: str) -> None:
    path = write_config(tmp_path, redis_url, pg_dsn)
    assert run(capsys, "-c", str(path), "migrate")[0] == 0
    seed_queue(redis_url, ready=4, dead={"support": 2, "sales": 1}, delayed=1, in_flight=2)
    insert_ledger(pg_dsn, [("processed", None)] * 3 + [("duplicate", "message_id"), ("skipped", "oversize"),
                                                        ("skipped", "source_deleted"), ("failed", "boom")])
    code, out, err = run(capsys, "-c", str(path), "status", "--json")
    assert code == cli.EXIT_NOT_RUNNING, err
    status = json.loads(out)
    assert status["daemon"]["state"] == "not_running"
    assert "no control socket" in status["daemon"]["error"]
    queue = status["queue"]
    assert (queue["ready"], queue["in_flight"], queue["delayed"], queue["dead"]) == (4, 2, 1, 3)
    assert queue["in_flight_by_consumer"] == {"test-consumer": 2}
    assert queue["oldest_ready_age"] is not None and queue["oldest_ready_age"] < 60
    assert queue["throughput"]["1m"] == 6.0  # processed + duplicate + skipped in the last minute
    assert status["ledger"] == {"window": "1h", "processed": 3, "duplicate": 1, "failed": 1, "processing": 0,
                                "skipped": {"oversize": 1, "source_deleted": 1}}
    assert status["listeners"] == [] and status["errors"] == {}
    assert status["health"]["status"] == "not_running"
    assert any("3 dead-lettered" in p for p in status["health"]["problems"])

    code, out, _ = run(capsys, "-c", str(path), "status")
    assert code == cli.EXIT_NOT_RUNNING
    lines = out.splitlines()
    assert lines[0] == f"not running: no control socket at {tmp_path / 'control.sock'}"
    assert lines[2] == "PROBLEMS" and "daemon is not running" in lines[3]
    assert next(line for line in lines if line.strip().startswith("dead")).split() == ["dead", "3"]
    assert "oversize: 1, source_deleted: 1" in out


def test_status_names_unreachable_redis_and_unmigrated_database(capsys, tmp_path: Path, pg_dsn: str) -> None:
    port = free_port()
    path = write_config(tmp_path, f"redis://:hunter2@127.0.0.1:{port}/0", pg_dsn)
    code, out, _ = run(capsys, "-c", str(path), "status", "--json")
    assert code == cli.EXIT_NOT_RUNNING
    status = json.loads(out)
    assert status["queue"] is None
    assert status["errors"]["redis"].startswith(f"Redis at redis://***@127.0.0.1:{port}/0 unreachable: ")
    assert "run `inboundctl migrate`" in status["errors"]["postgres"]
    assert "hunter2" not in out


def test_dlq_lists_and_filters_with_daemon_stopped(capsys, tmp_path: Path, redis_url: str, pg_dsn: str) -> None:
    path = write_config(tmp_path, redis_url, pg_dsn)
    ids = seed_queue(redis_url, dead={"support": 2, "sales": 1})
    code, out, _ = run(capsys, "-c", str(path), "dlq", "--json")
    assert code == 0
    entries = json.loads(out)
    assert [e["job_id"] for e in entries] == ids["dead"]
    first = entries[0]
    assert (first["account"], first["provider"], first["reason"], first["attempts"]) == ("support", "imap",
                                                                                      "parse_error", 8)
    assert first["last_error"].startswith("boom") and first["job"]["pointer"]["uid"] == 1 and "raw" not in first
    code, out, _ = run(capsys, "-c", str(path), "dlq", "--account", "sales")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["JOB", "ID", "ACCOUNT", "PROVIDER"]
    assert len(lines) == 3 and ids["dead"][2] in lines[1] and "boom: cannot parse second line" in lines[1]
    assert lines[2] == "1 dead-lettered job(s) shown"
    code, out, _ = run(capsys, "-c", str(path), "dlq", "--limit", "1", "--json")
    assert len(json.loads(out)) == 1


def test_redrive_round_trip_with_daemon_stopped(capsys, tmp_path: Path, redis_url: str, pg_dsn: str) -> None:
    import redis

    path = write_config(tmp_path, redis_url, pg_dsn)
    ids = seed_queue(redis_url, dead={"support": 2, "sales": 2})
    client = redis.Redis.from_url(redis_url)
    before = (client.xlen("{inboundd}:dlq"), client.xlen("{inboundd}:stream"))
    assert before == (4, 0)

    code, out, _ = run(capsys, "-c", str(path), "redrive", "--all", "--dry-run")
    assert code == 0 and out == "would move 4 job(s) back to the queue (dry run: nothing changed)\n"
    assert (client.xlen("{inboundd}:dlq"), client.xlen("{inboundd}:stream")) == before

    code, out, _ = run(capsys, "-c", str(path), "redrive", ids["dead"][0])
    assert code == 0 and out == "moved 1 job(s) back to the queue\n"
    code, out, _ = run(capsys, "-c", str(path), "redrive", "--account", "sales")
    assert out == "moved 2 job(s) back to the queue\n"
    code, out, err = run(capsys, "-c", str(path), "redrive", ids["dead"][0], "no-such-job")
    assert code == cli.EXIT_FAILED and out == "moved 0 job(s) back to the queue\n" and "2 of the given" in err

    from inboundd import jobs

    moved = [jobs.decode(fields[b"job"]) for _, fields in client.xrange("{inboundd}:stream")]
    assert sorted(j.id for j in moved) == sorted([ids["dead"][0], *ids["dead"][2:]])
    assert all(j.attempt == 0 for j in moved)
    code, out, _ = run(capsys, "-c", str(path), "dlq", "--json")
    assert [e["job_id"] for e in json.loads(out)] == [ids["dead"][1]]
    client.close()


def test_redis_unreachable_is_one_line_naming_the_server(capsys, tmp_path: Path, pg_dsn: str) -> None:
    port = free_port()
    path = write_config(tmp_path, f"redis://127.0.0.1:{port}/0", pg_dsn)
    for argv in (["dlq"], ["redrive", "--all"]):
        code, out, err = run(capsys, "-c", str(path), *argv)
        assert code == cli.EXIT_UNAVAILABLE and out == ""
        assert err.startswith(f"inboundctl: Redis at redis://127.0.0.1:{port}/0 unreachable: ") and err.count("\n") == 1


def test_the_console_script_prints_one_line_and_no_log_events_when_redis_is_down(tmp_path: Path,
                                                                                 pg_dsn: str) -> None:
    path = write_config(tmp_path, f"redis://127.0.0.1:{free_port()}/0", pg_dsn)
    result = subprocess.run([str(INBOUNDCTL), "-c", str(path), "dlq"], capture_output=True, text=True, timeout=60)
    assert result.returncode == cli.EXIT_UNAVAILABLE and result.stdout == ""
    assert result.stderr.startswith("inboundctl: Redis at redis://127.0.0.1:") and result.stderr.count("\n") == 1, \
        result.stderr                                       # no bare "redis.down" from the daemon's logging
