"""The control-socket app: the daemon's local operator API (unix socket only).

``GET /status`` (daemon, listeners and queue as JSON), ``POST /drain`` (stop
intake, finish in-flight work), ``POST /resume`` (back to service). It is
served by hypercorn on ``unix:`` binds only, never on TCP; ``inboundctl``
talks to it.
"""

from __future__ import annotations

import grp
import os
from typing import Any, Protocol

from quart_trio import QuartTrio

__all__ = ["ControlRuntime", "SocketInUse", "create_control_app", "prepare_socket_path", "secure_socket"]


class SocketInUse(FileExistsError):
    """The control socket's path is taken: another daemon answers on it, or it is not a socket."""


class ControlRuntime(Protocol):
    async def status(self) -> dict[str, Any]: ...

    def drain(self) -> None: ...

    def resume(self) -> None: ...


def create_control_app(runtime: ControlRuntime) -> QuartTrio:
    """The control app bound to *runtime*."""
    app = QuartTrio("inboundd-control")

    @app.get("/status")
    async def status() -> Any:
        return await runtime.status()

    @app.post("/drain")
    async def drain() -> Any:
        runtime.drain()
        return await runtime.status()

    @app.post("/resume")
    async def resume() -> Any:
        runtime.resume()
        return await runtime.status()

    return app


def secure_socket(path: str, mode: str, group: str) -> None:
    """Give the control socket its configured mode and group.

    Raises ``OSError``/``KeyError`` with the path or group named when that
    is not possible (the daemon refuses to run an unprotected socket).
    """
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise KeyError(f"control.group: no such group {group!r}") from None
        os.chown(path, -1, gid)
    os.chmod(path, int(mode, 8))


def prepare_socket_path(path: str) -> None:
    """Create the socket's directory and remove a stale socket left by a crash.

    Refuses (:class:`SocketInUse`) when *path* exists and is not a socket, or
    when another daemon still answers on it; ``OSError`` when the directory
    cannot be made.
    """
    import socket
    import stat

    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: a stale socket from a crashed daemon
        return
    finally:
        probe.close()
    raise SocketInUse("another inboundd is running on it (give each daemon its own control.socket)")
