"""systemd integration: the notify protocol (``sd_notify``) and the watchdog.

``Notifier`` sends datagrams to ``$NOTIFY_SOCKET`` (a path, or an abstract
socket name starting with ``@``). Without ``$NOTIFY_SOCKET`` every call is a
no-op, so the daemon runs the same under systemd, in a terminal and in tests.

``watchdog_interval()`` turns ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``) into
the ping period: half of the timeout, as sd_watchdog_enabled(3) recommends.
"""

from __future__ import annotations

import os
import socket

import trio

from . import log

__all__ = ["Notifier", "watchdog_interval", "run_watchdog"]

_log = log.get_logger("systemd")


class Notifier:
    """Sends sd_notify messages; failures are logged once, never raised."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address:
            # An abstract-namespace socket is written "@name" and addressed with a leading NUL.
            self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> None:
        """Send ``KEY=VALUE`` lines (``"READY=1"``, ``"STATUS=…"``) in one datagram."""
        if self._address is None:
            return
        payload = "\n".join(fields).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(payload, self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.event(_log, "systemd.notify_failed", level=30, error=str(exc))

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd ≥ 253 match this reload to its ExecReload (Type=notify-reload).
        self.notify("RELOADING=1", "STATUS=reloading configuration", f"MONOTONIC_USEC={time_monotonic_usec()}")

    def stopping(self, status: str = "stopping") -> None:
        self.notify("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def time_monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares reload stamps with."""
    import time

    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval(environ: dict[str, str] | os._Environ[str] | None = None) -> float | None:
    """The watchdog ping period in seconds, or None when no watchdog is requested.

    Half of ``$WATCHDOG_USEC``; None when unset, invalid, or when
    ``$WATCHDOG_PID`` names another process.
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    return usec / 2 / 1e6


async def run_watchdog(notifier: Notifier, interval: float, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Ping ``WATCHDOG=1`` every *interval* seconds until cancelled.

    The pings come from a task on the event loop, so they stop when the loop
    is blocked or wedged — which is what the watchdog is there to notice.
    """
    task_status.started()
    while True:
        notifier.watchdog()
        await trio.sleep(interval)
