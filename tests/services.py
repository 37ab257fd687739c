"""Private, real servers for the test suite: redis-server, PostgreSQL, Dovecot.

Each server runs on loopback, on a free port, in a temporary directory of its
own, and is stopped by its fixture (conftest.py) so no process outlives the
test session. The machine's own Redis (6379) and PostgreSQL (5432) are never
used. A missing binary fails the test with the Debian package to install.
"""

from __future__ import annotations

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

import pytest

from waiting import wait_for

__all__ = ["DovecotServer", "PostgresServer", "RedisServer", "free_port", "require_binary"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_binary(name: str, package: str, extra_dirs: list[str] | None = None) -> str:
    """The path of *name*, or fail the test saying which Debian package provides it."""
    found = shutil.which(name)
    if not found:
        for pattern in extra_dirs or []:
            matches = sorted(glob.glob(os.path.join(pattern, name)))
            if matches:
                found = matches[-1]
                break
    if not found:
        pytest.fail(f"{name} not found: install the Debian package {package!r} (scripts/setup --test does)",
                    pytrace=False)
    return found


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class _Process:
    """A server subprocess in its own session, stopped with a signal and killed if it lingers."""

    process: subprocess.Popen[bytes] | None = None
    stop_signal = signal.SIGTERM

    def _spawn(self, argv: list[str], log: Path, cwd: Path) -> None:
        with open(log, "ab") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                            start_new_session=True)

    def _check_alive(self, log: Path) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"{type(self).__name__} exited with {self.process.returncode}:\n"
                                 f"{log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        """Stop the server and wait for it; nothing of it keeps running."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, self.stop_signal)
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
        self.process = None


class RedisServer(_Process):
    """A private redis-server. ``persist=True`` turns on an fsync'd append-only file."""

    def __init__(self, directory: Path, persist: bool = False, port: int | None = None) -> None:
        self.binary = require_binary("redis-server", "redis-server")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persist = persist
        self.log = directory / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--dir", str(self.directory), "--daemonize", "no", "--protected-mode", "no"]
        argv += ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        self._spawn(argv, self.log, self.directory)
        import redis

        client = redis.Redis(port=self.port, socket_timeout=1)

        def ready() -> bool:
            self._check_alive(self.log)
            return bool(client.ping())

        try:
            wait_for(ready, 20, "redis-server to answer PING")
        finally:
            client.close()
        return self


def _pg_bindir() -> str:
    initdb = require_binary("initdb", "postgresql", ["/usr/lib/postgresql/*/bin"])
    return os.path.dirname(initdb)


class PostgresServer(_Process):
    """A private PostgreSQL cluster (initdb + postgres), run as an unprivileged user when we are root."""

    stop_signal = signal.SIGINT  # "fast" shutdown

    def __init__(self, directory: Path | None = None, port: int | None = None) -> None:
        self.bindir = _pg_bindir()
        # By default outside pytest's 0700 root-owned tmp tree: the server's user must reach it.
        if directory is None:
            directory = Path(tempfile.mkdtemp(prefix="inboundd-pg-"))
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
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
            raise AssertionError(f"{argv[0]} failed: {result.stdout.decode()}{result.stderr.decode()}")

    def start(self) -> "PostgresServer":
        if not (self.data / "PG_VERSION").exists():
            self._run([os.path.join(self.bindir, "initdb"), "-D", str(self.data), "-U", "postgres",
                       "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
        argv = self.user_prefix + [
            os.path.join(self.bindir, "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-h", "127.0.0.1", "-k", str(self.directory), "-c", "fsync=off", "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off", "-c", "max_connections=300", "-c", "log_min_messages=warning",
        ]
        # The log file is opened by us (root) and handed over as stdout.
        self._spawn(argv, self.log, self.directory)
        import psycopg

        def ready() -> bool:
            self._check_alive(self.log)
            with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                return True

        wait_for(ready, 60, "PostgreSQL to accept connections")
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


class DovecotServer(_Process):
    """A private Dovecot (IMAP only, plaintext on loopback), users in a passwd-file."""

    def __init__(self, directory: Path | None = None, port: int | None = None, users: int = 0) -> None:
        self.binary = require_binary("dovecot", "dovecot-imapd", ["/usr/sbin"])
        if os.geteuid() != 0:
            pytest.fail("the private Dovecot runs as root (it switches to nobody for mail): run with sudo",
                        pytrace=False)
        if directory is None:
            directory = Path(tempfile.mkdtemp(prefix="inboundd-dovecot-"))
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        os.chmod(self.directory, 0o755)
        self.port = port or free_port()
        self.log = self.directory / "dovecot.log"
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
        self._spawn([self.binary, "-F", "-c", str(self.config)], self.log, self.directory)

        def ready() -> bool:
            self._check_alive(self.log)
            return _port_open(self.port)

        wait_for(ready, 30, "Dovecot to listen")
        return self

    def take(self) -> tuple[str, str]:
        """A (user, password) made before the start that no one has used yet."""
        if not self._unused:
            raise AssertionError("DovecotServer ran out of prepared mailboxes: create it with more users")
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
        wait_for(lambda: time.time() >= written + 1.05, 3, "the passwd-file re-read second")

        def can_login() -> bool:
            client = imaplib.IMAP4("127.0.0.1", self.port, timeout=5)
            try:
                client.login(name, password)
                client.logout()
                return True
            except imaplib.IMAP4.error:
                client.shutdown()
                return False

        wait_for(can_login, 15, f"Dovecot to accept the new user {name}", interval=0.2)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
