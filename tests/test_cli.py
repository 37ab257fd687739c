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


def test_redact_and_describe_never_show_passwords() -> None:
    assert cli.redact_url("redis://:pw@h:6379/0") == "redis://***@h:6379/0"
    assert cli.redact_url("redis://h:6379/0") == "redis://h:6379/0"
    assert cli.redact_url("unix:///run/redis.sock?db=0") == "unix:///run/redis.sock?db=0"
    assert cli.describe_dsn("postgresql://u:pw@db.example:5433/mail") == "PostgreSQL at db.example:5433/mail"
    assert "pw" not in cli.describe_dsn("host=db password=pw dbname=mail")


def test_ledger_summary_folds_rows() -> None:
    summary = cli.ledger_summary([
        ("processed", None, 5), ("duplicate", "message_id", 2), ("skipped", "gone", 1),
        ("skipped", "oversize", 3), ("skipped", None, 1), ("failed", "boom", 4), ("processing", None, 1),
    ])
    assert summary == {"window": "1h", "processed": 5, "duplicate": 2, "failed": 4, "processing": 1,
                       "skipped": {"gone": 1, "oversize": 3, "unspecified": 1}}
