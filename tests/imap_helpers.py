"""Shared pieces of the IMAP tests: accounts on the private Dovecot, mail helpers."""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable, Sequence

import trio
from imapclient import IMAPClient

from inboundd import config as config_mod
from inboundd.providers.imap.conn import ImapAccount, accounts_from_config


def make_accounts(tmp_path: Path, port: int, users: Sequence[tuple[str, str]], **settings: Any) -> list[ImapAccount]:
    """``[[imap]]`` accounts for *users* on 127.0.0.1:*port*, loaded through the real config loader.

    *settings* are TOML values applied to every account (``start_from="all"``, ``folders=["INBOX"]`` …);
    a key ``per_account`` maps an index to extra settings for that account only.
    """
    return accounts_from_config(make_config(tmp_path, port, users, **settings))


def make_config(tmp_path: Path, port: int, users: Sequence[tuple[str, str]], *, prefix: str = "",
                **settings: Any) -> config_mod.Config:
    """The whole configuration of :func:`make_accounts`; *prefix* is TOML put before the ``[[imap]]`` tables."""
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
    # Short leases need a short Redis socket timeout (at most a third of the shortest lease).
    redis = "" if "[redis]" in prefix else '[redis]\nsocket_timeout = "500ms"\n'
    return config_mod.load_text(redis + prefix + "\n" + "\n".join(blocks), base=tmp_path)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


#: The From of every test message (the end-to-end tests check it arrives in PostgreSQL).
SENDER = "Ada Customer <ada@example.com>"


def message(n: int | str, subject: str | None = None, message_id: str | None = None) -> bytes:
    """A small plain-text message; its subject is *subject* or ``message N``, its Message-ID *message_id*
    (without ``<>``) or a unique one."""
    message_id = message_id or f"m{n}-{uuid.uuid4().hex}@test"
    return (f"From: {SENDER}\r\nTo: support@example.com\r\nSubject: {subject or f'message {n}'}\r\n"
            f"Message-ID: <{message_id}>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
            f"\r\nbody {n}\r\n").encode()


def client(port: int, user: str, password: str) -> IMAPClient:
    c = IMAPClient("127.0.0.1", port=port, ssl=False, timeout=10)
    c.login(user, password)
    return c


def append_messages(port: int, user: str, password: str, messages: Iterable[bytes], folder: str = "INBOX") -> list[int]:
    """APPEND each of *messages* on one connection; returns their UIDs (from APPENDUID)."""
    with client(port, user, password) as c:
        return [_appenduid(c.append(folder, raw)) for raw in messages]


def append_sync(port: int, user: str, password: str, count: int = 1, folder: str = "INBOX",
                start: int = 0) -> list[int]:
    """APPEND *count* messages numbered from *start*; returns their UIDs."""
    return append_messages(port, user, password, (message(n) for n in range(start, start + count)), folder)


def append_subjects(port: int, user: str, password: str, subjects: Sequence[str], folder: str = "INBOX") -> list[int]:
    """APPEND one message per subject of *subjects*, in order; returns their UIDs."""
    return append_messages(port, user, password, (message(n, s) for n, s in enumerate(subjects)), folder)


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


if __import__("os").environ.get("INBOUNDD_TEST_LOG"):
    from inboundd import log as _log

    _log.configure(__import__("os").environ["INBOUNDD_TEST_LOG"])


class BlackHoleProxy:
    """TCP proxy (trio, loopback) to a server, whose connections can be made to swallow everything.

    Two faults, both without FIN or RST — the peer just stops answering:

    * :meth:`freeze_existing`: the connections open now swallow everything
      for good, new ones still go through (a NAT entry or firewall state
      that vanished);
    * :meth:`freeze` … :meth:`resume`: the whole path stops (a partition, a
      server wedged in the kernel): connections open or opened meanwhile
      are accepted and kept open, nothing is forwarded in either direction
      until :meth:`resume`, when what was held flows on.

    It runs in the test's trio loop (``nursery.start(proxy.run)``): a test
    serving a daemon subprocess through it waits with ``eventually`` and
    runs blocking calls in threads.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.connections: list[trio.Event] = []   # set = frozen
        #: Everything clients sent (to count commands).
        self.sent = bytearray()
        #: Everything the server sent to clients (as the server sent it).
        self.received = bytearray()
        self._flowing = trio.Event()
        self._flowing.set()

    @property
    def frozen(self) -> bool:
        return not self._flowing.is_set()

    def freeze(self) -> None:
        """From now on forward nothing, either way, on any connection (new ones are still accepted)."""
        if not self.frozen:
            self._flowing = trio.Event()

    def resume(self) -> None:
        """Forward again (what was held first)."""
        self._flowing.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, downstream: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:   # the server is down: so is this connection
            await downstream.aclose()
            return
        frozen = trio.Event()
        self.connections.append(frozen)

        async def pump(src, dst, record=None, rewrite=None):
            try:
                async for chunk in src:
                    await self._flowing.wait()
                    if frozen.is_set():
                        await trio.sleep_forever()
                    if record is not None:
                        record += chunk
                    await dst.send_all(rewrite(chunk) if rewrite else chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass   # the peer reset it: a client giving up on a frozen connection does
            nursery.cancel_scope.cancel()   # one side is gone: close the other too

        async with downstream, upstream:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, downstream, upstream, self.sent)
                nursery.start_soon(pump, upstream, downstream, self.received, self.server_says)

    def server_says(self, chunk: bytes) -> bytes:
        """What the client receives for *chunk* from the server (subclasses rewrite it)."""
        return chunk

    def freeze_existing(self) -> None:
        for frozen in self.connections:
            frozen.set()


@asynccontextmanager
async def proxied(target_port: int) -> AsyncIterator[BlackHoleProxy]:
    """A :class:`BlackHoleProxy` to *target_port* for the block, to count what goes through it.

    Its counts (``connections``, ``sent``, ``received``) are exact as soon as
    the client's call returns. Dovecot's log is not: its log process writes
    each line a little later (on a busy machine, noticeably), so a count read
    from the log right after a login may miss it.
    """
    async with trio.open_nursery() as nursery:
        proxy = BlackHoleProxy(target_port)
        await nursery.start(proxy.run)
        yield proxy
        nursery.cancel_scope.cancel()
