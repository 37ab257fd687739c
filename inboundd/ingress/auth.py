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

__all__ = ["AccountPause", "AuthPolicy", "Retry"]


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


class AccountPause:
    """Whether a web-API account's credentials work: shared by its renewer, its walks and its fetches.

    An identity provider's refusal (``invalid_grant``, ``unauthorized_client``,
    ``insufficientPermissions`` …) does not heal by retrying, so the first one
    pauses the account (:class:`AuthPolicy` with a limit of one) for
    *retry_interval*: its jobs wait in the queue without calling the
    provider, its state shows ``auth_failed`` with the reason, and other
    accounts go on. Any success ends the pause; so does a reload
    (:meth:`kick`). Times are the caller's clock, in seconds.
    """

    def __init__(self, retry_interval: float) -> None:
        self.policy = AuthPolicy(1, retry_interval, Backoff(1.0, retry_interval))
        self.error: str | None = None
        self.paused_until: float | None = None

    def refused(self, reason: str, now: float) -> float:
        """Google refused the credentials at *now*: pause; returns how long."""
        retry = self.policy.auth_failed(reason, now)
        self.error = reason
        self.paused_until = now + retry.delay
        return retry.delay

    def worked(self, now: float) -> None:
        """A call with the credentials succeeded: the account is not paused."""
        self.policy.logged_in(now)
        self.error = None
        self.paused_until = None

    def paused_for(self, now: float) -> float | None:
        """Seconds the account stays paused, or None when it is not."""
        if self.paused_until is None or now >= self.paused_until:
            return None
        return self.paused_until - now

    def kick(self) -> None:
        """Try again at once (a reload may have fixed the credentials); a refusal pauses again."""
        self.paused_until = None
