"""The auth-failure policy of an ingress: back off, then pause slowly once credentials are clearly wrong.

One policy per thing that logs in (an IMAP listener; a Graph or Gmail
account's renewer): its state is what ``inboundctl status`` shows, and it
only affects that thing — other accounts go on.

Pure module: no I/O; time comes in as arguments.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from ..backoff import Backoff

__all__ = ["AuthPolicy", "Retry"]


class Retry(msgspec.Struct, frozen=True):
    """What to do after a failure: which state to report and how long to wait."""

    state: Literal["backoff", "auth_failed"]
    delay: float
    error: str


class AuthPolicy:
    """Login failures: normal backoff first, then ``auth_failed`` with slow retries.

    After ``limit`` consecutive login failures (a success resets the count,
    other failures leave it alone) the state is ``auth_failed`` with the
    server's message and retries come only every ``retry_interval`` — a wrong
    password must not hammer the server, nor lock the account through the
    server's own brute-force protection. An operator's ``kick`` (SIGHUP)
    retries at once; it does not reset the count, so a still-wrong password
    goes straight back to ``auth_failed``.
    """

    def __init__(self, limit: int, retry_interval: float, backoff: Backoff) -> None:
        self.limit = max(limit, 1)
        self.retry_interval = retry_interval
        self.backoff = backoff
        self.consecutive = 0

    def logged_in(self, now: float) -> None:
        """Login succeeded: forget earlier auth failures."""
        self.consecutive = 0
        self.backoff.connected(now)

    def auth_failed(self, message: str, now: float) -> Retry:
        """The server rejected the credentials at *now* with *message*."""
        self.consecutive += 1
        delay = self.backoff.failed(now)
        if self.consecutive >= self.limit:
            return Retry("auth_failed", self.retry_interval, message)
        return Retry("backoff", delay, message)

    def failed(self, message: str, now: float) -> Retry:
        """Any other failure (network, TLS, protocol, queue, database) at *now*."""
        delay = self.backoff.failed(now)
        if self.consecutive >= self.limit:
            # Still locked out: a network blip must not turn slow retries into fast ones.
            return Retry("auth_failed", max(delay, self.retry_interval), message)
        return Retry("backoff", delay, message)
