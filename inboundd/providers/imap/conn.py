"""One IMAP connection driven from trio: imapclient in threads, IDLE on socket readability.

imapclient is blocking. Every command runs in a worker thread under a shared
``trio.CapacityLimiter``; nothing blocks a thread while a mailbox is idle:
IDLE waits with ``trio.lowlevel.wait_readable`` on the connection's socket
and only hands the socket to a thread once the server has sent something.
So 500 idle mailboxes cost 500 sockets and no threads, and cancelling a
listener in IDLE is immediate.

Cancellation: a command cancelled mid-flight is *abandoned* — its thread
finishes on its own, bounded by the socket's read timeout — and the
connection remembers that it is busy. :meth:`Connection.aclose` (shielded,
at most :data:`CLOSE_TIMEOUT` seconds) waits for such a thread, ends IDLE
with DONE and sends LOGOUT; if the deadline passes it shuts the socket down.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import trio
from imapclient import IMAPClient
from imapclient import exceptions as imap_exc
from imapclient.imapclient import SocketTimeout

from ...config_convert import Secret
from ...config_schema import CoreConfig
from .settings import ImapAccountConfig

__all__ = [
    "CLOSE_TIMEOUT",
    "AuthError",
    "Connection",
    "ConnectionLost",
    "FolderError",
    "ImapAccount",
    "ImapError",
    "Selected",
    "accounts_from_config",
    "default_limiter",
]

#: Upper bound on DONE + LOGOUT when a connection is closed (also on cancellation).
CLOSE_TIMEOUT = 2.0
#: Connect (TCP + TLS handshake) timeout; reads use the account's ``read_timeout``.
CONNECT_TIMEOUT = 15.0
#: TCP keepalive: a silently dead peer is noticed after about IDLE + INTVL * CNT seconds.
_KEEPALIVE = {"TCP_KEEPIDLE": 60, "TCP_KEEPINTVL": 15, "TCP_KEEPCNT": 4}

T = TypeVar("T")


class ImapError(Exception):
    """An IMAP operation failed; ``str()`` is safe to log and show in status."""


class AuthError(ImapError):
    """The server rejected the credentials; the message is the server's own text."""


class ConnectionLost(ImapError):
    """The connection ended (BYE, EOF, IDLE terminated by the server)."""


class FolderError(ImapError):
    """SELECT/EXAMINE failed: the folder does not exist or may not be opened."""


class ImapAccount(msgspec.Struct, frozen=True):
    """One configured account with its password, as listeners and fetchers need it."""

    config: ImapAccountConfig
    password: Secret | None = None

    @property
    def id(self) -> str:
        return self.config.id

    def fingerprint(self) -> tuple[Any, ...]:
        """Equal fingerprints ⇔ a running listener/pool can be kept across a reload."""
        return (msgspec.to_builtins(self.config), self.password)


def accounts_from_config(cfg: CoreConfig) -> list[ImapAccount]:
    """The ``[[imap]]`` accounts of *cfg* paired with their passwords."""
    accounts: list[ImapAccountConfig] = getattr(cfg, "imap", [])
    return [ImapAccount(account, cfg.secret(f"imap[{index}].password")) for index, account in enumerate(accounts)]


def default_limiter(threads: int = 16) -> trio.CapacityLimiter:
    """The limiter bounding how many imapclient calls run in threads at once."""
    return trio.CapacityLimiter(threads)


class Selected(msgspec.Struct, frozen=True):
    """What SELECT/EXAMINE said about a folder."""

    folder: str
    uidvalidity: int
    uidnext: int | None
    exists: int
    readonly: bool


def login_rejected(message: str) -> bool:
    """Whether a failed LOGIN/AUTHENTICATE means "wrong credentials" rather than "try again".

    RFC 5530 response codes say when the server could not check the
    credentials (``UNAVAILABLE``, ``SERVERBUG``, ``INUSE``): those are ordinary
    failures and must not lock the listener into ``auth_failed``.
    """
    upper = message.upper()
    return not any(code in upper for code in ("[UNAVAILABLE]", "[SERVERBUG]", "[INUSE]", "[LIMIT]"))


def _ssl_context(config: ImapAccountConfig) -> ssl.SSLContext:
    # Verified certificates and host names always; a private CA is an addition, not a bypass.
    return ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH, cafile=config.ca_file or None)


def _read_oauth_token(path: str) -> str:
    """The access token in *path*: raw text, or JSON with an ``access_token`` field.

    Read at every connect, so an external refresher can rotate the file.
    """
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise AuthError(f"cannot read oauth_token_file {path!r}: {exc.strerror or exc}") from None
    if text.startswith("{"):
        try:
            text = str(json.loads(text)["access_token"]).strip()
        except (ValueError, KeyError, TypeError):
            raise AuthError(f"oauth_token_file {path!r}: JSON without an access_token field") from None
    if not text:
        raise AuthError(f"oauth_token_file {path!r} is empty")
    return text


def _set_keepalive(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in _KEEPALIVE.items():
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:
        pass  # keepalive is a safety net; the periodic EXAMINE probe still detects dead peers


def _connect_blocking(account: ImapAccount) -> IMAPClient:
    """Connect, secure and authenticate (in a worker thread). Raises ImapError subclasses or OSError."""
    config = account.config
    implicit = config.tls == "implicit"
    context = _ssl_context(config) if config.tls != "none" else None
    client = IMAPClient(
        config.host, port=config.port, ssl=implicit, ssl_context=context if implicit else None,
        timeout=SocketTimeout(connect=CONNECT_TIMEOUT, read=config.read_timeout),
    )
    try:
        # imaplib would otherwise log every line, LOGIN arguments included, at DEBUG.
        client._imap.debug = 0
        client.normalise_times = False
        _set_keepalive(client.socket())
        if config.tls == "starttls":
            # Never fall back to plain text: no STARTTLS capability is an error.
            if not client.has_capability("STARTTLS"):
                raise ImapError(f"{config.host}:{config.port} does not offer STARTTLS")
            client.starttls(context)
        try:
            if config.auth == "xoauth2":
                client.oauth2_login(config.username, _read_oauth_token(config.oauth_token_file))
            else:
                if account.password is None:
                    raise AuthError("no password configured")
                client.login(config.username, account.password.reveal())
        except imap_exc.LoginError as exc:
            message = str(exc)
            if login_rejected(message):
                raise AuthError(message) from None
            raise ImapError(message) from None
        # Capabilities change after login; the cached pre-login list would lie (IDLE, MOVE).
        client._cached_capabilities = None
        client.capabilities()
        return client
    except BaseException:
        _shutdown_quietly(client)
        raise


def _shutdown_quietly(client: IMAPClient) -> None:
    try:
        client.socket().shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass
    try:
        client.socket().close()
    except (OSError, AttributeError):
        pass


def describe(exc: BaseException) -> str:
    """A one-line, secret-free description of a connection error for logs and status."""
    if isinstance(exc, ImapError):
        return str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message or exc}"
    if isinstance(exc, socket.timeout):
        return "timed out waiting for the server"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


class Connection:
    """An authenticated IMAP connection, used by one trio task at a time.

    Open with :meth:`open`; always finish with :meth:`aclose` (also on
    cancellation — it is shielded and bounded). Every blocking call goes
    through :meth:`call`.
    """

    def __init__(self, client: IMAPClient, account: ImapAccount, limiter: trio.CapacityLimiter) -> None:
        self.client = client
        self.account = account
        self.limiter = limiter
        self.selected: Selected | None = None
        self.capabilities = frozenset(c.upper() for c in client.capabilities())
        self._idle_tag: bytes | None = None
        #: Set while a worker thread uses the connection; still set (unfired) after an abandoned call.
        self._busy: trio.Event | None = None
        self._closed = False
        self._broken = False

    # ------------------------------------------------------------------ opening

    @classmethod
    async def open(cls, account: ImapAccount, limiter: trio.CapacityLimiter) -> Connection:
        """Connect, negotiate TLS and log in.

        Raises :class:`AuthError` when the credentials are rejected,
        :class:`ImapError` or ``OSError`` for anything else. Cancellation is
        immediate: a half-open connection left behind by the abandoned thread
        is shut down by that thread once it finishes.
        """
        lock = threading.Lock()
        state: dict[str, Any] = {"cancelled": False}

        def work() -> IMAPClient:
            client = _connect_blocking(account)
            with lock:
                if state["cancelled"]:
                    _shutdown_quietly(client)
                    raise ConnectionLost("connect abandoned")  # never seen: the caller is gone
                state["client"] = client
            return client

        try:
            client = await trio.to_thread.run_sync(work, limiter=limiter, abandon_on_cancel=True)
        except trio.Cancelled:
            with lock:
                state["cancelled"] = True
                client = state.get("client")
            if client is not None:
                _shutdown_quietly(client)
            raise
        return cls(client, account, limiter)

    @property
    def has_idle(self) -> bool:
        return b"IDLE" in self.capabilities

    @property
    def has_move(self) -> bool:
        return b"MOVE" in self.capabilities

    @property
    def has_uidplus(self) -> bool:
        return b"UIDPLUS" in self.capabilities

    @property
    def usable(self) -> bool:
        """Neither closed, broken by an error, nor held by an abandoned thread."""
        return not self._closed and not self._broken and self._busy is None

    # ------------------------------------------------------------------ commands

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn(*args)`` in a worker thread and return its result.

        Any exception marks the connection broken (callers close and
        reconnect). On cancellation the thread is abandoned and the
        connection stays busy until it ends; see :meth:`aclose`.
        """
        if self._closed:
            raise ConnectionLost("connection already closed")
        if self._busy is not None:
            raise RuntimeError("IMAP connection used by two tasks at once")
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()
        # Whether the thread began fn, decided under a lock against a cancellation that
        # arrives first (while waiting for a thread slot): then fn never runs at all.
        gate = threading.Lock()
        state = {"started": False, "abandoned": False}

        def work() -> T:
            with gate:
                if state["abandoned"]:
                    return None  # type: ignore[return-value]  # nobody waits for it
                state["started"] = True
            try:
                return fn(*args)
            finally:
                try:
                    token.run_sync_soon(done.set)
                except trio.RunFinishedError:
                    pass

        self._busy = done
        try:
            result = await trio.to_thread.run_sync(work, limiter=self.limiter, abandon_on_cancel=True)
        except trio.Cancelled:
            with gate:
                if not state["started"]:
                    state["abandoned"] = True
                    self._busy = None  # fn never touched the connection: it is free again
            raise
        except BaseException:
            self._broken = True
            self._busy = None
            raise
        self._busy = None
        return result

    async def select(self, folder: str, *, readonly: bool) -> Selected:
        """SELECT (or EXAMINE when *readonly*) *folder*. Raises :class:`FolderError` if it cannot be opened."""

        def work() -> dict[bytes, Any]:
            try:
                return self.client.select_folder(folder, readonly=readonly)
            except imap_exc.IMAPClientAbortError:
                raise
            except imap_exc.IMAPClientError as exc:
                raise FolderError(f"cannot open folder {folder!r}: {exc}") from None
            finally:
                self.client._imap.untagged_responses.clear()

        try:
            info = await self.call(work)
        except FolderError:
            self._broken = False  # the connection itself is fine
            raise
        selected = Selected(
            folder=folder,
            uidvalidity=int(info.get(b"UIDVALIDITY", 0)),
            uidnext=int(info[b"UIDNEXT"]) if b"UIDNEXT" in info else None,
            exists=int(info.get(b"EXISTS", 0)),
            readonly=readonly,
        )
        self.selected = selected
        return selected

    async def search_uids(self, criteria: Sequence[str]) -> tuple[list[int], bool]:
        """``UID SEARCH criteria`` in the selected folder: the UIDs, and whether new mail was
        announced (EXISTS) while it ran — such mail may be missing from the result, and the
        server will not announce it again."""

        def work() -> tuple[list[int], bool]:
            try:
                uids = [int(uid) for uid in self.client.search(list(criteria))]
                return uids, "EXISTS" in self.client._imap.untagged_responses
            finally:
                self.client._imap.untagged_responses.clear()

        return await self.call(work)

    def _until_tagged(self, tag: bytes, name: str) -> list[bytes]:
        imap = self.client._imap
        lines: list[bytes] = []
        try:
            while not imap.tagged_commands[tag]:
                resp = imap._get_response()
                if resp is not None and not imap.tagged_commands[tag]:
                    lines.append(resp)
            typ, data = imap.tagged_commands.pop(tag)
        finally:
            imap.untagged_responses.clear()
        if typ != "OK":
            text = data[0].decode("utf-8", "replace") if data and isinstance(data[0], bytes) else str(data)
            raise ImapError(f"{name} failed: {typ} {text}")
        return lines

    # ------------------------------------------------------------------ IDLE

    async def idle_start(self) -> list[bytes]:
        """Enter IDLE; returns untagged lines the server sent before its continuation."""
        return await self.call(self._idle_start_blocking)

    def _idle_start_blocking(self) -> list[bytes]:
        imap = self.client._imap
        tag = imap._command("IDLE")
        lines: list[bytes] = []
        try:
            # A server may send pending untagged responses before "+ idling";
            # imapclient's idle() would treat those as an error.
            while True:
                resp = imap._get_response()
                if imap.tagged_commands.get(tag):
                    typ, data = imap.tagged_commands.pop(tag)
                    raise ImapError(f"IDLE refused: {typ} {data[0]!r}")
                if resp is None:
                    break
                lines.append(resp)
        finally:
            imap.untagged_responses.clear()
        self._idle_tag = tag
        return lines

    async def idle_wait(self, timeout: float) -> list[bytes]:
        """Wait up to *timeout* seconds in IDLE for the server to speak; returns its untagged lines.

        Returns ``[]`` on timeout. No thread is held while waiting: only
        once the socket is readable (or bytes are already buffered) does a
        worker thread read the complete responses. Raises
        :class:`ConnectionLost` if the server ended IDLE or the connection.
        """
        if not self._buffered():
            with trio.move_on_after(timeout) as waited:
                await trio.lowlevel.wait_readable(self.client.socket())
            if waited.cancelled_caught:
                return []
        # Not under the timeout: the data is there, and a read cut short would leave the
        # connection busy with an abandoned thread. The socket's read_timeout bounds it.
        return await self.call(self._idle_read_blocking)

    def _buffered(self) -> bool:
        """Whether response bytes already sit in imaplib's or the TLS layer's buffer.

        Those never make the socket readable again, so waiting on it would
        miss them. ``peek`` on a non-blocking socket returns buffered bytes,
        or performs at most one non-blocking read — it never consumes data.
        """
        sock = self.client.socket()
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        sock.setblocking(False)
        try:
            return bool(self.client._imap.file.peek(1))
        except (OSError, ValueError):
            return False
        finally:
            sock.settimeout(self.account.config.read_timeout)

    def _idle_read_blocking(self) -> list[bytes]:
        imap = self.client._imap
        lines: list[bytes] = []
        try:
            while True:
                resp = imap._get_response()  # a full response, literals included; bounded by read_timeout
                if self._idle_tag is not None and imap.tagged_commands.get(self._idle_tag):
                    typ, data = imap.tagged_commands.pop(self._idle_tag)
                    self._idle_tag = None
                    raise ConnectionLost(f"server ended IDLE: {typ} {data[0]!r}")
                if resp is not None:
                    lines.append(resp)
                if not self._buffered():
                    return lines
        finally:
            imap.untagged_responses.clear()

    async def idle_done(self) -> list[bytes]:
        """Leave IDLE (DONE); returns untagged lines that arrived meanwhile."""
        return await self.call(self._idle_done_blocking)

    def _idle_done_blocking(self) -> list[bytes]:
        tag = self._idle_tag
        if tag is None:
            return []
        self.client._imap.send(b"DONE\r\n")
        self._idle_tag = None
        return self._until_tagged(tag, "IDLE")

    # ------------------------------------------------------------------ closing

    async def aclose(self, *, logout: bool = True) -> bool:
        """Close the connection: DONE if idling, LOGOUT, then the socket.

        Shielded from cancellation and bounded by :data:`CLOSE_TIMEOUT`: it
        waits for an abandoned worker thread to finish first, so LOGOUT is
        sent on a connection in a known state. Past the deadline (or after an
        error) the socket is shut down without LOGOUT. Returns whether LOGOUT
        was acknowledged. Idempotent.
        """
        if self._closed:
            return False
        ok = False
        with trio.move_on_after(CLOSE_TIMEOUT) as scope:
            scope.shield = True
            if self._busy is not None:
                await self._busy.wait()
                self._busy = None
            if logout and not self._broken:
                try:
                    await self.call(self._logout_blocking)
                    ok = True
                except Exception:
                    ok = False
        self._closed = True
        if not ok:
            _shutdown_quietly(self.client)
        return ok

    def _logout_blocking(self) -> None:
        self.client.socket().settimeout(CLOSE_TIMEOUT)
        if self._idle_tag is not None:
            self._idle_done_blocking()
        self.client.logout()
