"""``inboundd --is-configured``: the unit's ExecCondition= (skip while no account, fail when invalid)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = '[[imap]]\nid = "support"\nhost = "127.0.0.1"\nusername = "support"\npassword_file = "pw"\n'


def is_configured(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inboundd.daemon", "--is-configured", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("text", "status", "says"), [
    ((ROOT / "etc" / "inboundd.toml").read_text(), 1, "not configured: no account"),
    ("", 1, "not configured"),
    (ACCOUNT + ACCOUNT.replace("support", "sales"), 0, "configured (2 imap account(s))"),
    ("[daemon]\nconsumers = -1\n", 255, "daemon.consumers"),
], ids=["shipped-example", "empty", "one-account", "invalid"])
def test_exit_status_follows_execcondition(tmp_path: Path, text: str, status: int, says: str) -> None:
    config = tmp_path / "inboundd.toml"
    config.write_text(text)
    (tmp_path / "pw").write_text("secret\n")
    result = is_configured(config)
    assert result.returncode == status, result
    assert says in result.stdout + result.stderr
    assert str(config) in result.stdout + result.stderr


def test_a_missing_file_fails_the_start(tmp_path: Path) -> None:
    result = is_configured(tmp_path / "absent.toml")
    assert result.returncode == 255 and "cannot read configuration file" in result.stderr, result


def test_the_unit_runs_the_condition_before_the_daemon() -> None:
    lines = (ROOT / "systemd" / "inboundd.service").read_text().splitlines()
    condition = lines.index("ExecCondition=/usr/bin/inboundd --is-configured -c /etc/inboundd.toml")
    assert condition < lines.index("ExecStart=/usr/bin/inboundd -c /etc/inboundd.toml")
