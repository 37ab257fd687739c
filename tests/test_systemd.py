"""sd_notify and the watchdog period, without a daemon."""

from __future__ import annotations

import os
import socket

from inboundd import systemd


def test_watchdog_interval_is_half_the_timeout() -> None:
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0


def test_no_watchdog_when_unset_invalid_or_for_another_process() -> None:
    assert systemd.watchdog_interval({}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None


def test_notifier_sends_one_datagram_per_call_to_an_abstract_socket() -> None:
    name = f"inboundd-unit-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        notifier = systemd.Notifier("@" + name)
        notifier.ready("running")
        notifier.stopping("bye")
        first = sock.recv(4096).decode().splitlines()
        second = sock.recv(4096).decode().splitlines()
        notifier.close()
    assert first[:2] == ["READY=1", "STATUS=running"] and first[2] == f"MAINPID={os.getpid()}"
    assert second == ["STOPPING=1", "STATUS=bye"]


def test_notifier_without_socket_is_a_no_op() -> None:
    notifier = systemd.Notifier("")
    assert not notifier.enabled
    notifier.ready("running")  # nothing to send to, nothing raised


def test_unreachable_socket_is_reported_not_raised(tmp_path) -> None:
    notifier = systemd.Notifier(str(tmp_path / "missing.sock"))
    notifier.status("x")
    notifier.status("y")
    assert notifier.enabled
