"""The README's run command: ``inboundd trial`` on private servers, as an operator meets it.

From a fresh clone without the test extras it reaches READY; it stores a
dropped email; Ctrl-C, SIGTERM and closing its terminal stop every process it
started and free every port; a second run stops what a killed one left
running, with one line; a port held by another program is one line too.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import psycopg
import pytest

from inboundd import config as config_mod
from inboundd.trial import runner
from inboundd.trial.servers import TrialError, free_port, port_in_use, process_start_time
from waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent

#: The trial's pid files, relative to its state directory.
PID_FILES = ("inboundd.pid", "redis/server.pid", "postgres/server.pid", "dovecot/server.pid")


@pytest.fixture
def state() -> Iterator[Path]:
    """A state directory PostgreSQL's own user can reach (outside pytest's 0700 tree)."""
    base = Path(tempfile.mkdtemp(prefix="inboundd-trial-"))
    base.chmod(0o755)
    yield base / "state"
    shutil.rmtree(base, ignore_errors=True)


def recorded_processes(state: Path) -> dict[str, int]:
    """pid file → pid of each live process the trial recorded in *state*."""
    found = {}
    for name in PID_FILES:
        path = state / name
        if path.exists():
            pid, start_time = path.read_text().split()
            if process_start_time(int(pid)) == start_time:
                found[name] = int(pid)
    return found


def processes_under(directory: Path) -> list[str]:
    """Live processes whose working directory or command line is inside *directory* (any of the trial's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        if process_start_time(int(entry.name)) is None:
            continue  # a zombie holds nothing
        if cwd == str(directory) or cwd.startswith(f"{directory}/") or str(directory) in cmdline:
            found.append(f"{entry.name}: {cmdline.strip() or cwd}")
    return found


def trial_ports(state: Path) -> dict[str, int]:
    cfg = config_mod.load(state / "inboundd.toml")
    return {"redis": int(cfg.redis.url.rsplit(":", 1)[1].split("/")[0]),
            "postgresql": int(cfg.postgres.dsn.rsplit(":", 1)[1].split("/")[0]),
            "imap": cfg.imap[0].port,
            "http": int(cfg.http.listen[0].rsplit(":", 1)[1])}


def assert_nothing_left(state: Path, ports: dict[str, int], pids: dict[str, int], root: Path) -> None:
    """No process the trial started runs any more, and every port it used is free."""
    assert pids.keys() == set(PID_FILES), pids  # the check below covers all four
    wait_for(lambda: not any(process_start_time(pid) for pid in pids.values()), 10,
             "the trial's recorded processes to be gone")
    assert processes_under(root) == []
    assert [name for name, port in ports.items() if port_in_use(port)] == []
    assert recorded_processes(state) == {}


def wait_ready(state: Path, process: subprocess.Popen, output: Path | None, timeout: float,
               earlier_daemon: int | None = None) -> dict[str, int]:
    """Wait for the trial daemon's /readyz to answer 200; return the trial's ports.

    With *earlier_daemon*, wait for a daemon other than that one (which may
    still answer on its own ports).
    """

    def ready() -> bool:
        assert process.poll() is None, output.read_text(errors="replace") if output else process.returncode
        if earlier_daemon is not None and recorded_processes(state).get("inboundd.pid") in (None, earlier_daemon):
            return False
        ports = trial_ports(state)
        return httpx.get(f"http://127.0.0.1:{ports['http']}/readyz", timeout=2).status_code == 200

    wait_for(ready, timeout, "the trial daemon's /readyz to answer 200")
    return trial_ports(state)


def start_trial(state: Path, output: Path) -> subprocess.Popen:
    """``python -m inboundd.trial`` in a session of its own, as a terminal's foreground job would be."""
    with open(output, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "inboundd.trial", "--state", str(state), "--free-ports"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def finish(process: subprocess.Popen) -> None:
    """Kill a trial a failed test left running (its servers run in their own sessions: stop their groups too)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def kill_recorded(state: Path) -> None:
    for pid in recorded_processes(state).values():
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------- a fresh clone, a real terminal


def readme_run_command() -> str:
    quick_start = (ROOT / "README.md").read_text().split("## Quick start", 1)[1]
    return re.search(r"^    (\S.*)$", quick_start, re.M).group(1)


class Terminal:
    """A pseudo-terminal that is the controlling terminal of the command it runs; closing it hangs it up."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], transcript: Path) -> None:
        self.master, slave = pty.openpty()
        self.transcript = transcript
        self.process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        # A terminal nobody reads fills up and blocks its writers: keep reading.
        self.closing = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with open(self.transcript, "ab") as out:
            while not self.closing.is_set():
                # Never block in read(): a read in progress would keep the master open after close().
                if not select.select([self.master], [], [], 0.1)[0]:
                    continue
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: every writer is gone
                    return
                if not data:
                    return
                out.write(data)
                out.flush()

    def close(self) -> None:
        """Close the terminal window: the kernel hangs up the line and signals the session (SIGHUP)."""
        self.closing.set()
        self.reader.join(timeout=10)
        os.close(self.master)


def test_fresh_clone_run_command_reaches_ready_without_test_extras_and_closing_its_terminal_stops_all() -> None:
    command = readme_run_command()
    assert command == "scripts/run"
    base = Path(tempfile.mkdtemp(prefix="inboundd-clone-"))
    base.chmod(0o755)  # PostgreSQL runs as its own user below it
    clone = base / "inboundd"
    terminal = None
    try:
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
        env = {key: value for key, value in os.environ.items()
               if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME") and not key.startswith("PYTEST")}
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                      if not p.startswith(str(ROOT)))
        transcript = base / "terminal.log"
        started = time.monotonic()
        terminal = Terminal([str(clone / command), "--free-ports"], clone, env, transcript)
        state = clone / "state"
        ports = wait_ready(state, terminal.process, transcript, 600)
        print(f"fresh clone to READY: {time.monotonic() - started:.1f}s")
        no_pytest = subprocess.run([str(clone / ".venv" / "bin" / "python"), "-c", "import pytest"],
                                   capture_output=True, text=True)
        assert "No module named 'pytest'" in no_pytest.stderr, "the run command installed the test extras"
        pids = recorded_processes(state)

        terminal.close()
        # The terminal is gone, and what was written to it since: the exit status tells. 0 is the
        # daemon's after a clean drain (a daemon that took the SIGHUP as a reload would not exit).
        assert terminal.process.wait(timeout=60) == 0
        assert_nothing_left(state, ports, pids, clone)
    finally:
        if terminal is not None:
            finish(terminal.process)
            kill_recorded(clone / "state")
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- the trial, run from this checkout


def test_trial_stores_a_sample_email_and_ctrl_c_stops_everything(state: Path) -> None:
    output = state.parent / "trial.log"
    trial = start_trial(state, output)
    try:
        ports = wait_ready(state, trial, output, 120)
        cfg = config_mod.load(state / "inboundd.toml")
        sent = subprocess.run([sys.executable, str(ROOT / "scripts" / "trial-send"), "--state", str(state),
                               "--subject", "trial check"], capture_output=True, text=True, check=True)
        assert "appended" in sent.stdout

        def stored() -> list[tuple[str]]:
            with psycopg.connect(cfg.postgres.dsn) as conn:
                return conn.execute("SELECT subject FROM inbound_messages").fetchall()

        wait_for(stored, 60, "the sample email in inbound_messages")
        assert stored() == [("trial check",)]
        pids = recorded_processes(state)
        os.killpg(trial.pid, signal.SIGINT)  # what Ctrl-C does in a terminal: the whole foreground group
        assert trial.wait(timeout=60) == 0, output.read_text()[-3000:]
        assert_nothing_left(state, ports, pids, state)
    finally:
        finish(trial)
        kill_recorded(state)


def test_a_second_trial_stops_what_a_killed_one_left_running_with_one_line(state: Path) -> None:
    first_output, second_output = state.parent / "first.log", state.parent / "second.log"
    first = start_trial(state, first_output)
    second = None
    try:
        wait_ready(state, first, first_output, 120)
        orphans = recorded_processes(state)
        assert orphans.keys() == set(PID_FILES)
        first.send_signal(signal.SIGKILL)  # the runner alone: its daemon and servers keep running
        first.wait()
        assert recorded_processes(state) == orphans

        second = start_trial(state, second_output)
        ports = wait_ready(state, second, second_output, 120, earlier_daemon=orphans["inboundd.pid"])
        text = second_output.read_text()
        lines = [line for line in text.splitlines() if "earlier trial" in line]
        assert len(lines) == 1, text
        for name, pid in orphans.items():
            assert f"pid {pid}" in lines[0]
            assert process_start_time(pid) is None, f"{name} (pid {pid}) of the killed trial still runs"
        assert "Traceback" not in text and "Address already in use" not in text

        pids = recorded_processes(state)
        assert set(pids.values()).isdisjoint(orphans.values())
        os.killpg(second.pid, signal.SIGHUP)  # the terminal went away
        assert second.wait(timeout=60) == 0, second_output.read_text()[-3000:]
        assert "reload" not in second_output.read_text()
        assert_nothing_left(state, ports, pids, state)
    finally:
        finish(first)
        if second is not None:
            finish(second)
        kill_recorded(state)


def test_a_stop_signal_during_start_up_stops_the_servers_already_started(state: Path) -> None:
    output = state.parent / "trial.log"
    trial = start_trial(state, output)
    try:
        # PostgreSQL's initdb takes seconds: redis is up, the daemon is not.
        wait_for(lambda: (state / "redis" / "server.pid").exists(), 60, "the trial's redis-server to start")
        os.killpg(trial.pid, signal.SIGTERM)
        assert trial.wait(timeout=60) == 128 + signal.SIGTERM, output.read_text()
        assert "Traceback" not in output.read_text()
        assert recorded_processes(state) == {}
        assert processes_under(state) == []
    finally:
        finish(trial)
        kill_recorded(state)


def test_a_port_held_by_another_program_is_one_line_and_starts_nothing(state: Path, capsys) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        ports = {name: free_port() for name in runner.TRIAL_PORTS}
        ports["postgresql"] = taken
        with pytest.raises(TrialError, match=rf"^port {taken} \(postgresql\) is in use by another program: "
                                             r"stop it, or run with --free-ports$"):
            runner.run(state, ports)
    assert recorded_processes(state) == {}
    assert not any((state / name).exists() for name in PID_FILES)
