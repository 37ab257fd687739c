"""The shipped systemd unit: systemd-analyze accepts it and its exposure stays low."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "inboundd.service"


@pytest.fixture
def installed_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's inboundd (verify checks the binary exists)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze not found: apt-get install systemd"
    binary = shutil.which("inboundd") or str(ROOT / ".venv" / "bin" / "inboundd")
    assert Path(binary).exists(), f"inboundd console script missing at {binary}: run scripts/setup"
    unit = tmp_path / "inboundd.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/inboundd", binary))
    return unit


def test_unit_has_the_notify_contract() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
                 "RuntimeDirectory=inboundd", "StateDirectory=inboundd", "User=inboundd", "ProtectSystem=strict",
                 "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=yes"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    assert re.search(r"^RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6$", text, re.M)


def test_systemd_analyze_verify_accepts_the_unit(installed_unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(installed_unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "inboundd.service" not in result.stderr, result.stderr


def test_security_exposure_is_at_most_2(installed_unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(installed_unit)],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r"Overall exposure level for inboundd\.service: (\d+\.\d+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, match.group(0)
