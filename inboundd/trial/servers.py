"""Private, real servers on loopback: redis-server, PostgreSQL, Dovecot.

``inboundd trial`` runs them under ``./state``; the test suite runs them in
temporary directories (``tests/services.py``). Each server lives in a
directory of its own and runs in a session of its own, so a terminal's
signals reach only its owner, which stops it with its whole process group.

While a server runs, its directory holds ``server.pid`` (pid and kernel start
time). An owner that died without stopping its servers leaves them running:
:meth:`ManagedProcess.leftover` recognises such a process (the same pid *and*
start time, so a recycled pid is never mistaken for it) and
:meth:`ManagedProcess.stop_leftover` stops it.

Problems the operator fixes (a missing program, not root) raise
:class:`MissingPrerequisite`, naming the Debian package; a server that dies
or does not answer in time raises :class:`ServerFailed` with its log's tail.
Nothing here imports test tooling.
"""

from __future__ import annotations

import errno
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, TypeVar

__all__ = [
    "DovecotServer",
    "ManagedProcess",
    "MissingPrerequisite",
    "PostgresServer",
    "RedisServer",
    "ServerFailed",
    "TrialError",
    "free_port",
    "port_in_use",
    "process_start_time",
    "require_binary",
    "wait_until",
]

T = TypeVar("T")


class TrialError(Exception):
    """A problem starting or stopping a private server; the message is meant for the operator."""


class MissingPrerequisite(TrialError):
    """A program is not installed, or the process lacks a privilege it needs."""


class ServerFailed(TrialError):
    """A server exited, or did not become ready in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    """Whether a server could not bind 127.0.0.1:*port* now (something else holds it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no owner
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.02,
               fatal: tuple[type[BaseException], ...] = (TrialError,)) -> T:
    """Poll *predicate* until it returns a true value, and return that value.

    Exceptions of the *fatal* types propagate at once; any other exception
    counts as "not yet" until the deadline. After *timeout* seconds raises
    :class:`ServerFailed` naming *what* (and the last exception, if any).
    Blocks the calling thread; a signal handler's exception interrupts it.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = predicate()
        except fatal:
            raise
        except Exception as exc:  # not ready yet
            last, value = exc, None
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {type(last).__name__}: {last})" if last else ""
            raise ServerFailed(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)


def require_binary(name: str, package: str, extra_dirs: list[str] | None = None) -> str:
    """The path of program *name* (on $PATH or in *extra_dirs* globs), else :class:`MissingPrerequisite`."""
    found = shutil.which(name)
    if not found:
        for pattern in extra_dirs or []:
            matches = sorted(glob.glob(os.path.join(pattern, name)))
            if matches:
                found = matches[-1]
                break
    if not found:
        raise MissingPrerequisite(f"{name} not found: install the Debian package {package!r} (scripts/setup does)")
    return found


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------- process identity


def process_start_time(pid: int) -> str | None:
    """The kernel start time of live process *pid* (``/proc/PID/stat`` field 22), or None when it is gone.

    A zombie counts as gone: it holds no port and no file, and only its
    parent can reap it.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    state, start_time = fields[0], fields[19]
    return None if state in ("Z", "X") else start_time


def parse_pid_file(text: str) -> tuple[int, str] | None:
    """``"PID START_TIME"`` → (pid, start time); None for anything else (an empty or foreign file)."""
    parts = text.split()
    if len(parts) != 2 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return int(parts[0]), parts[1]


class ManagedProcess:
    """A process in a session of its own, recorded in a pid file, stopped with its whole process group."""

    process: subprocess.Popen[bytes] | None = None
    #: What stops it gracefully (sent to the whole group).
    stop_signal = signal.SIGTERM
    #: How long a graceful stop may take before the group is killed.
    stop_timeout = 20.0
    #: What the operator knows it as ("redis-server", "inboundd", …).
    label = "process"
    pid_file: Path
    #: Where its output goes (None: our own stdout/stderr).
    log: Path | None = None

    def _spawn(self, argv: list[str], cwd: Path, output: Path | None = None) -> None:
        """Start *argv* in a new session; its output goes to *output* (else our own stdout/stderr)."""
        if output is None:
            self.process = subprocess.Popen(argv, cwd=cwd, start_new_session=True)
        else:
            with open(output, "ab") as out:
                self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                                start_new_session=True)
        start_time = process_start_time(self.process.pid)
        if start_time is not None:
            self.pid_file.write_text(f"{self.process.pid} {start_time}\n")

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:] if self.log and self.log.exists() else ""
            raise ServerFailed(f"{self.label} exited with status {self.process.returncode}"
                               + (f"; the end of {self.log}:\n{tail}" if tail else ""))

    def stop(self) -> None:
        """Stop the process group and wait for it; returns when nothing of it runs."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, self.stop_signal)
                self.process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                _killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
        self.process = None
        self.pid_file.unlink(missing_ok=True)

    def leftover(self) -> int | None:
        """The pid of a process an earlier owner started here and left running, else None."""
        try:
            recorded = parse_pid_file(self.pid_file.read_text())
        except OSError:
            return None
        if recorded is None:
            return None
        pid, start_time = recorded
        if self.process is not None and self.process.pid == pid:
            return None  # ours
        return pid if process_start_time(pid) == start_time else None

    def stop_leftover(self) -> int | None:
        """Stop a :meth:`leftover` process group like :meth:`stop` does; return its pid (None if there was none).

        Returns once the process is gone (it is not our child: we watch
        ``/proc`` rather than wait for it).
        """
        pid = self.leftover()
        if pid is not None:
            start_time = process_start_time(pid)
            _killpg(pid, self.stop_signal)
            try:
                wait_until(lambda: process_start_time(pid) != start_time, self.stop_timeout,
                           f"the earlier {self.label} (pid {pid}) to stop", interval=0.05)
            except ServerFailed:
                _killpg(pid, signal.SIGKILL)
                wait_until(lambda: process_start_time(pid) != start_time, 10,
                           f"the earlier {self.label} (pid {pid}) to die", interval=0.05)
        self.pid_file.unlink(missing_ok=True)
        return pid


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------- servers


class RedisServer(ManagedProcess):
    """A private redis-server. ``persist=True`` turns on an fsync'd append-only file."""

    label = "redis-server"

    def __init__(self, directory: Path, persist: bool = False, port: int | None = None) -> None:
        self.binary = require_binary("redis-server", "redis-server")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persist = persist
        self.log = directory / "redis.log"
        self.pid_file = directory / "server.pid"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        """Start and return once it answers PING (:class:`ServerFailed` if it exits or stays silent)."""
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--dir", str(self.directory), "--daemonize", "no", "--protected-mode", "no"]
        argv += ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        self._spawn(argv, self.directory, self.log)
        import redis

        client = redis.Redis(port=self.port, socket_timeout=1)

        def ready() -> bool:
            self._check_alive()
            return bool(client.ping())

        try:
            wait_until(ready, 20, "redis-server to answer PING")
        finally:
            client.close()
        return self


def _pg_bindir() -> str:
    initdb = require_binary("initdb", "postgresql", ["/usr/lib/postgresql/*/bin"])
    return os.path.dirname(initdb)


class PostgresServer(ManagedProcess):
    """A private PostgreSQL cluster (initdb + postgres), run as an unprivileged user when we are root."""

    label = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown

    def __init__(self, directory: Path | None = None, port: int | None = None) -> None:
        self.bindir = _pg_bindir()
        # By default outside any 0700 root-owned tree: the server's user must reach it.
        if directory is None:
            directory = Path(tempfile.mkdtemp(prefix="inboundd-pg-"))
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self.pid_file = self.directory / "server.pid"
        self.port = port or free_port()
        self.user_prefix: list[str] = []
        if os.geteuid() == 0:
            user = "postgres"
            try:
                pwd.getpwnam(user)
            except KeyError:
                user = "nobody"
            uid = pwd.getpwnam(user).pw_uid
            gid = pwd.getpwnam(user).pw_gid
            os.chown(self.directory, uid, gid)
            self.user_prefix = [require_binary("runuser", "util-linux"), "-u", user, "--"]
        os.chmod(self.directory, 0o700)

    def _run(self, argv: list[str]) -> None:
        result = subprocess.run(self.user_prefix + argv, capture_output=True, cwd=self.directory)
        if result.returncode != 0:
            raise ServerFailed(f"{argv[0]} failed: {result.stdout.decode()}{result.stderr.decode()}")

    def start(self) -> "PostgresServer":
        """Start (running initdb first if needed); return once it accepts connections."""
        if not (self.data / "PG_VERSION").exists():
            self._run([os.path.join(self.bindir, "initdb"), "-D", str(self.data), "-U", "postgres",
                       "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
        argv = self.user_prefix + [
            os.path.join(self.bindir, "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-h", "127.0.0.1", "-k", str(self.directory), "-c", "fsync=off", "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off", "-c", "max_connections=300", "-c", "log_min_messages=warning",
        ]
        # The log file is opened by us (root) and handed over as stdout.
        self._spawn(argv, self.directory, self.log)
        import psycopg

        def ready() -> bool:
            self._check_alive()
            with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                return True

        wait_until(ready, 60, "PostgreSQL to accept connections")
        return self

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, exist_ok: bool = False) -> str:
        """Create an empty database and return its DSN."""
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not (exists and exist_ok):
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.dsn(name)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class DovecotServer(ManagedProcess):
    """A private Dovecot (IMAP only, plaintext on loopback), users in a passwd-file."""

    label = "dovecot"

    def __init__(self, directory: Path | None = None, port: int | None = None, users: int = 0) -> None:
        self.binary = require_binary("dovecot", "dovecot-imapd", ["/usr/sbin"])
        if os.geteuid() != 0:
            raise MissingPrerequisite("the private Dovecot runs as root (it switches to nobody for mail): "
                                      "run with sudo")
        if directory is None:
            directory = Path(tempfile.mkdtemp(prefix="inboundd-dovecot-"))
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        os.chmod(self.directory, 0o755)
        self.port = port or free_port()
        self.log = self.directory / "dovecot.log"
        self.pid_file = self.directory / "server.pid"
        self.users = self.directory / "users"
        # Mailboxes made before the start, handed out by take(): a user added to a
        # running Dovecot is not seen at once (its passwd-file is re-read at most once
        # a second, and an early refused login costs the auth failure delay).
        self._unused = [(f"box{n}-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex) for n in range(users)]
        if not self.users.exists() or self._unused:
            self.users.write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in self._unused))
        self.mail = self.directory / "mail"
        self.mail.mkdir(exist_ok=True)
        nobody = pwd.getpwnam("nobody")
        os.chown(self.mail, nobody.pw_uid, nobody.pw_gid)
        self.config = self.directory / "dovecot.conf"
        self.config.write_text(self._config_text())

    def _config_text(self) -> str:
        d = self.directory
        nogroup = "nogroup"
        return f"""
base_dir = {d}/run
state_dir = {d}/state
log_path = {self.log}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
mail_uid = nobody
mail_gid = {nogroup}
first_valid_uid = 0
imap_idle_notify_interval = 2 mins
mail_max_userip_connections = 2000
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.users}
}}
userdb {{
  driver = static
  args = uid=nobody gid={nogroup} home={self.mail}/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  process_limit = 2000
  client_limit = 2000
  service_count = 0
}}
service imap {{
  process_limit = 2000
}}
service anvil {{
  client_limit = 5000
}}
service auth {{
  client_limit = 5000
}}
default_client_limit = 5000
default_process_limit = 2000
# Wrong-password tests count login attempts in the log; they need not wait long.
auth_failure_delay = 1 secs
"""

    def start(self) -> "DovecotServer":
        """Start and return once it listens on its port."""
        self._spawn([self.binary, "-F", "-c", str(self.config)], self.directory, self.log)

        def ready() -> bool:
            self._check_alive()
            return _port_open(self.port)

        wait_until(ready, 30, "Dovecot to listen")
        return self

    def take(self) -> tuple[str, str]:
        """A (user, password) made before the start that no one has used yet."""
        if not self._unused:
            raise TrialError("DovecotServer ran out of prepared mailboxes: create it with more users")
        return self._unused.pop()

    def add_user(self, name: str, password: str) -> None:
        """Add a mailbox user; returns once Dovecot accepts its login.

        Dovecot notices a changed passwd-file by its mtime and re-reads it at
        most once per second, so a login right after the change may still be
        refused: wait until one succeeds (when the server runs).
        """
        import imaplib

        with open(self.users, "a") as users:
            users.write(f"{name}:{{PLAIN}}{password}\n")
        stamp = max(time.time(), self.users.stat().st_mtime + 1)
        os.utime(self.users, (stamp, stamp))
        if self.process is None:
            return
        # A login refused here would count as an authentication failure in Dovecot's
        # log (tests count those): first let the re-read second pass.
        written = time.time()
        wait_until(lambda: time.time() >= written + 1.05, 3, "the passwd-file re-read second")

        def can_login() -> bool:
            client = imaplib.IMAP4("127.0.0.1", self.port, timeout=5)
            try:
                client.login(name, password)
                client.logout()
                return True
            except imaplib.IMAP4.error:
                client.shutdown()
                return False

        wait_until(can_login, 15, f"Dovecot to accept the new user {name}", interval=0.2)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
