"""``inboundd trial``: run the daemon on private servers kept under a state directory.

Starts redis-server, PostgreSQL and Dovecot (one trial mailbox) with
:mod:`inboundd.trial.servers`, writes the embedded trial configuration with
their ports to ``STATE/inboundd.toml``, runs the daemon in the foreground and
stops everything when it exits.

Everything runs in sessions of its own and this process forwards signals, so
that a terminal's signals mean what the operator meant: Ctrl-C (SIGINT) and
SIGTERM drain the daemon, then the servers stop; closing the terminal
(SIGHUP) does the same (the daemon itself would take SIGHUP as "reload").
If this process is killed outright, its pid files let the next run find and
stop what it left running.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
from pathlib import Path
from types import FrameType

from inboundd.trial import config_text
from inboundd.trial.servers import (DovecotServer, ManagedProcess, PostgresServer, RedisServer, TrialError,
                                    free_port, port_in_use)

__all__ = ["EXIT_SETUP", "TRIAL_PORTS", "build_parser", "main"]

#: The trial configuration's fixed ports.
TRIAL_PORTS = {"redis": 16379, "postgresql": 15432, "imap": 10143, "http": 8025}

#: Exit status when the trial could not start (the reason is one line on stderr).
EXIT_SETUP = 1

#: Signals that stop the trial.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _say(line: str) -> None:
    """One line for the operator on stderr; silently dropped once the terminal is gone."""
    try:
        print(f"trial: {line}", file=sys.stderr, flush=True)
    except OSError:  # EIO after the terminal was closed
        pass


class DaemonProcess(ManagedProcess):
    """The daemon, run on the trial configuration; its output goes to our stderr."""

    label = "inboundd"
    stop_signal = signal.SIGTERM
    #: Above the trial configuration's ``daemon.shutdown_grace`` (10s): a drain is never cut short.
    stop_timeout = 30.0

    def __init__(self, state: Path) -> None:
        self.state = state
        self.pid_file = state / "inboundd.pid"
        self.log = None

    def start(self, config: Path) -> None:
        """Start the daemon; returns at once (the daemon reports readiness itself)."""
        self._spawn([sys.executable, "-m", "inboundd.daemon", "-c", str(config)], self.state)


class _Stopped(BaseException):
    """A stop signal arrived before the daemon ran (a BaseException, like KeyboardInterrupt: polling loops
    that take ordinary exceptions for "not ready yet" must not swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _SignalRelay:
    """Turns stop signals into a graceful stop of whatever runs now.

    Before the daemon runs, a stop signal raises :class:`_Stopped` (start-up
    is abandoned, started servers are stopped). While it runs, the first stop
    signal is forwarded to it (SIGHUP as SIGTERM: a drain, not a reload); a
    later SIGINT or SIGTERM is forwarded too (the daemon then exits at once),
    a later SIGHUP is not (closing a terminal may deliver it twice). While the
    servers stop, signals are ignored so that nothing is left half-stopped.
    """

    def __init__(self) -> None:
        self.daemon: DaemonProcess | None = None
        self.stopping = False
        self.forwarded = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "_SignalRelay":
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            return
        process = self.daemon.process if self.daemon is not None else None
        if process is None or process.poll() is not None:
            raise _Stopped(signum)
        if self.forwarded and signum == signal.SIGHUP:
            return
        self.forwarded += 1
        try:
            os.kill(process.pid, signal.SIGTERM if signum == signal.SIGHUP else signum)
        except ProcessLookupError:
            pass


def _trial_config(ports: dict[str, int]) -> str:
    """The embedded trial configuration with *ports* instead of the fixed ones."""
    text = config_text()
    for name, default in TRIAL_PORTS.items():
        text = text.replace(f":{default}", f":{ports[name]}").replace(f"port = {default}", f"port = {ports[name]}")
    return text


def run(state: Path, ports: dict[str, int]) -> int:
    """Run the trial in *state* on *ports* until the daemon exits or a stop signal; return the exit status.

    Raises :class:`TrialError` (one line for the operator) when it cannot
    start. Returns only once every process it started is gone.
    """
    state.mkdir(parents=True, exist_ok=True)
    password_file = state / "trial-imap.password"
    if not password_file.exists():
        password_file.write_text(secrets.token_hex(12) + "\n")
        password_file.chmod(0o600)
    password = password_file.read_text().strip()

    redis = RedisServer(state / "redis", persist=True, port=ports["redis"])
    postgres = PostgresServer(state / "postgres", port=ports["postgresql"])
    dovecot = DovecotServer(state / "dovecot", port=ports["imap"])
    daemon = DaemonProcess(state)

    leftovers = [(process, pid) for process in (daemon, dovecot, postgres, redis) if (pid := process.leftover())]
    if leftovers:
        names = ", ".join(f"{process.label} pid {pid}" for process, pid in leftovers)
        _say(f"an earlier trial left {names} running in {state}: stopping them first")
        for process, _ in leftovers:  # the daemon first: it drains while its servers still answer
            process.stop_leftover()
    busy = [f"{port} ({name})" for name, port in ports.items() if port_in_use(port)]
    if busy:
        raise TrialError(f"port {', '.join(busy)} is in use by another program: stop it, or run with --free-ports")

    if f"trial:{{PLAIN}}{password}" not in dovecot.users.read_text():
        dovecot.users.write_text(f"trial:{{PLAIN}}{password}\n")
    started: list[ManagedProcess] = []
    with _SignalRelay() as relay:
        try:
            for server in (redis, postgres, dovecot):
                started.append(server)
                server.start()
            postgres.create_database("inboundd", exist_ok=True)
            config = state / "inboundd.toml"
            config.write_text(_trial_config(ports))
            _say(f"redis {redis.url}, postgresql {postgres.dsn('inboundd')}, "
                 f"imap 127.0.0.1:{dovecot.port} (user trial, password in {password_file})")
            _say(f"config {config}; http http://127.0.0.1:{ports['http']}/readyz; "
                 "logs below (Ctrl-C stops, closing the terminal too)")
            started.append(daemon)
            relay.daemon = daemon
            daemon.start(config)
            assert daemon.process is not None
            status = daemon.process.wait()
        except _Stopped as stop:
            status = 128 + stop.signum
        finally:
            relay.stopping = True
            for process in reversed(started):
                process.stop()
    _say(f"stopped (daemon exit status {status}); the data stays in {state}")
    return status


def build_parser() -> argparse.ArgumentParser:
    ports = ", ".join(f"{name} {port}" for name, port in TRIAL_PORTS.items())
    parser = argparse.ArgumentParser(
        prog="inboundd trial",
        description=("Run inboundd in the foreground on its embedded trial configuration, with a private\n"
                     "Redis, PostgreSQL and Dovecot (one trial mailbox, user 'trial') under a state directory.\n"
                     "Runs as root (the private Dovecot needs it; PostgreSQL runs as the postgres user)."),
        epilog=(
            f"ports: {ports} on 127.0.0.1 (--free-ports picks free ones).\n"
            "state directory: the data stays between runs (delete it to start afresh); it holds\n"
            "  inboundd.toml (the configuration of this run), trial-imap.password, inboundd.pid and\n"
            "  redis/, postgres/, dovecot/ (each with its log and server.pid).\n"
            "signals: SIGINT (Ctrl-C) and SIGTERM drain the daemon, then stop the servers; a second\n"
            "  one stops the daemon at once. SIGHUP (the terminal closed) stops everything the same way.\n"
            "leftovers: processes an earlier trial left running in the same state directory (its\n"
            "  runner was killed) are stopped first, with one line naming them.\n"
            f"exit status: the daemon's (0 after a clean stop); {EXIT_SETUP} when the trial could not start:\n"
            "  one line says why (a program missing, a port in use; a failing server adds its log's end);\n"
            "  128+N when signal N stopped it during start-up.\n"
            "examples:\n"
            "  inboundd trial\n"
            "  inboundd trial --state /tmp/inboundd-trial --free-ports"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--state", type=Path, default=Path("state"), metavar="DIR",
                        help="state directory (default: ./state)")
    parser.add_argument("--free-ports", action="store_true",
                        help="use free ports instead of the fixed ones (tests, or a second trial)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ports = {name: free_port() for name in TRIAL_PORTS} if args.free_ports else dict(TRIAL_PORTS)
    try:
        return run(args.state.resolve(), ports)
    except TrialError as exc:
        _say(str(exc))
        return EXIT_SETUP
