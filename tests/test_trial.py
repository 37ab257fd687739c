"""The README's run command: the trial brings the daemon to READY and stores a dropped email."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import psycopg

from inboundd import config as config_mod
from waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent


def test_trial_run_stores_a_sample_email() -> None:
    state = Path(tempfile.mkdtemp(prefix="inboundd-trial-"))
    state.chmod(0o755)  # PostgreSQL runs as its own user below it
    log = open(state / "trial.log", "wb")
    trial = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "trial"), "--state", str(state), "--free-ports"],
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        config_path = state / "inboundd.toml"

        def ready() -> bool:
            assert trial.poll() is None, (state / "trial.log").read_text()
            cfg = config_mod.load(config_path)
            return httpx.get(f"http://{cfg.http.listen[0]}/readyz", timeout=2).status_code == 200

        wait_for(ready, 90, "the trial daemon's /readyz to answer 200")
        cfg = config_mod.load(config_path)
        sent = subprocess.run([sys.executable, str(ROOT / "scripts" / "trial-send"), "--state", str(state),
                               "--subject", "trial check"], capture_output=True, text=True, check=True)
        assert "appended" in sent.stdout

        def stored() -> list[tuple[str]]:
            with psycopg.connect(cfg.postgres.dsn) as conn:
                return conn.execute("SELECT subject FROM inbound_messages").fetchall()

        wait_for(stored, 60, "the sample email in inbound_messages")
        assert stored() == [("trial check",)]
        os.killpg(trial.pid, signal.SIGINT)  # what Ctrl-C does in a terminal: the whole foreground group
        assert trial.wait(timeout=60) == 0, (state / "trial.log").read_text()[-3000:]
    finally:
        if trial.poll() is None:
            os.killpg(trial.pid, signal.SIGKILL)
            trial.wait()
        log.close()
        shutil.rmtree(state, ignore_errors=True)
