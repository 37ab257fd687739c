"""Shared pieces of the IMAP tests: accounts on the private Dovecot, a recording queue, mail helpers."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest
import trio
from imapclient import IMAPClient

from inboundd import config as config_mod
from inboundd.jobs import Job
from inboundd.providers.imap_conn import ImapAccount, accounts_from_config


def add_users(server: Any, users: Sequence[tuple[str, str]]) -> None:
    """Add *users* to a Dovecot and return once it really accepts each of them.

    Dovecot re-reads its passwd-file at most once per wall-clock second, so a
    login in the same second as the user was added can fail (and then costs
    the auth failure delay). Wait for the next second, then prove a login.
    """
    import time

    from services import wait_for

    for user in users:
        server.add_user(*user)
    added = int(time.time())
    wait_for(lambda: time.time() >= added + 1.05, 3, "the next second")
    for user in users:
        def can_login(user: tuple[str, str] = user) -> bool:
            with client(server.port, *user):
                return True

        wait_for(can_login, 15, f"Dovecot to accept the new user {user[0]}")


@pytest.fixture
def mailbox(dovecot: Any) -> tuple[str, str]:
    """A fresh (user, password) on the shared private Dovecot that can log in right now."""
    user = (f"m-{uuid.uuid4().hex[:10]}", uuid.uuid4().hex)
    add_users(dovecot, [user])
    return user


def make_accounts(tmp_path: Path, port: int, users: Sequence[tuple[str, str]], **settings: Any) -> list[ImapAccount]:
    """``[[imap]]`` accounts for *users* on 127.0.0.1:*port*, loaded through the real config loader.

    *settings* are TOML values applied to every account (``start_from="all"``, ``folders=["INBOX"]`` …);
    a key ``per_account`` maps an index to extra settings for that account only.
    """
    per_account: dict[int, dict[str, Any]] = settings.pop("per_account", {})
    blocks = []
    for index, (user, password) in enumerate(users):
        secret = tmp_path / f"imap-{index}-{uuid.uuid4().hex[:6]}.password"
        secret.write_text(password + "\n")
        values: dict[str, Any] = {
            "id": f"acct{index}", "host": "127.0.0.1", "port": port, "tls": "none", "username": user,
            "password_file": secret.name, "reconnect_base": 0.05, "reconnect_cap": 0.5, "lease": 0,
        }
        values.update(settings)
        values.update(per_account.get(index, {}))
        blocks.append("[[imap]]\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in values.items()))
    cfg = config_mod.load_text("\n".join(blocks), base=tmp_path)
    return accounts_from_config(cfg)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Recorder:
    """A queue stand-in with ``enqueue_many``: records acknowledged jobs; can be told to fail."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.fail: BaseException | None = None
        self.attempts = 0
        #: Called (in the listener's task) after each acknowledged batch.
        self.after_ack: Callable[[list[Job]], Any] | None = None

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
        self.attempts += 1
        await trio.lowlevel.checkpoint()
        if self.fail is not None:
            raise self.fail
        batch = list(jobs)
        self.jobs.extend(batch)
        if self.after_ack is not None:
            await self.after_ack(batch)
        return [job.id for job in batch]

    def uids(self, account: str | None = None, folder: str | None = None) -> list[int]:
        return [j.pointer.uid for j in self.jobs
                if (account is None or j.pointer.account == account)
                and (folder is None or j.pointer.folder == folder)]


def message(n: int | str, subject: str | None = None) -> bytes:
    return (f"From: sender@example.org\r\nTo: rcpt@example.org\r\nSubject: {subject or f'message {n}'}\r\n"
            f"Message-ID: <m{n}-{uuid.uuid4().hex}@test>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
            f"\r\nbody {n}\r\n").encode()


def client(port: int, user: str, password: str) -> IMAPClient:
    c = IMAPClient("127.0.0.1", port=port, ssl=False, timeout=10)
    c.login(user, password)
    return c


def append_sync(port: int, user: str, password: str, count: int = 1, folder: str = "INBOX",
                start: int = 0) -> list[int]:
    """APPEND *count* messages; returns their UIDs (from APPENDUID)."""
    uids = []
    with client(port, user, password) as c:
        for n in range(start, start + count):
            response = c.append(folder, message(n))
            uids.append(_appenduid(response))
    return uids


def _appenduid(response: bytes) -> int:
    # b"[APPENDUID 1700000000 5] Append completed."
    text = response.decode()
    return int(text.split("APPENDUID", 1)[1].split("]", 1)[0].split()[1])


async def append(port: int, user: str, password: str, count: int = 1, folder: str = "INBOX",
                 start: int = 0) -> list[int]:
    return await trio.to_thread.run_sync(append_sync, port, user, password, count, folder, start)


async def imap(port: int, user: str, password: str, fn: Callable[[IMAPClient], Any]) -> Any:
    """Run ``fn(client)`` on a fresh logged-in imapclient in a thread."""

    def work() -> Any:
        with client(port, user, password) as c:
            return fn(c)

    return await trio.to_thread.run_sync(work)


async def eventually(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """Wait (trio) until *predicate()* is true; fail naming *what* after *timeout* seconds."""
    with trio.move_on_after(timeout):
        while True:
            value = predicate()
            if value:
                return value
            await trio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


if __import__("os").environ.get("INBOUNDD_TEST_LOG"):
    from inboundd import log as _log

    _log.configure(__import__("os").environ["INBOUNDD_TEST_LOG"])
