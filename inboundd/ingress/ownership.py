"""Work that only one daemon may do at a time: run it while holding a :class:`~.lease.Lease`.

:meth:`Ownership.run` loops: take the lease (standing by while another
daemon holds it, waking just after it can expire), then run the work and
renew every ``ttl / 3`` beside it. The work is cancelled the moment
ownership cannot be proven — the lease was lost to another daemon
(``lost``), or no renewal succeeded for ``ttl`` minus a margin, measured
from the send time of the last successful one (``expired``: Redis is
unreachable, so another daemon may own it by now) — and the loop starts
over. Before any write only the owner may make, the work calls
:meth:`Ownership.confirm`.

A lease held by an earlier life of this same daemon instance (it was
killed; the lease has not expired yet) is taken over at once, its fencing
token advanced (``.taken_over``, logged with the holder it replaced): a
restarted daemon resumes its mailboxes and renewers in seconds, not after a
lease.

Used by every single-owner ingress: IMAP listeners (one owner per mailbox),
and renewers of Graph subscriptions and Gmail watches. Timing runs on trio's
clock (tests drive it with ``trio.testing.MockClock``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import trio

from .. import log
from ..backoff import Backoff
from .lease_clock import LeaseClock

__all__ = ["LeaseLike", "Ownership", "STANDBY_MAX_WAIT"]

_log = log.get_logger("ingress.ownership")

#: A standby re-checks a held lease at least this often (plus its remaining time).
STANDBY_MAX_WAIT = 5.0


class LeaseLike(Protocol):
    """What :class:`Ownership` needs of a lease (:class:`~.lease.Lease`, or a test's fake)."""

    ttl: float
    token: int | None
    value: str | None
    #: Whether the last acquisition took the lease from an earlier life of this daemon instance.
    took_over: bool
    #: What that take-over replaced (``"<owner>|<token>"``).
    taken_from: str | None

    async def try_acquire(self, *, take_over_own: bool = False) -> float | None: ...

    async def renew(self) -> bool: ...

    async def still_owner(self) -> bool: ...

    def forget(self) -> None: ...

    async def release(self) -> None: ...


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Ownership:
    """Runs work only while *lease* is held; see the module docstring.

    *event* names the log events (``"<event>.acquired"``, ``.taken_over``,
    ``.renew_failed``, ``.lost``), logged to *logger*, and *fields* their
    context (account, folder …); *count* is called with ``acquired``,
    ``taken_over`` (also acquired, from an earlier life of this daemon),
    ``released``, ``lost`` or ``expired`` for the caller's metric. *on_standby* is called whenever the lease is not ours
    and a wait begins; *on_error* with a one-line description when Redis
    failed (``lease: …``, ``lease renewal: …``), made by *describe*.
    """

    def __init__(
        self,
        lease: LeaseLike,
        *,
        event: str,
        fields: Mapping[str, Any],
        count: Callable[[str], None] = lambda event: None,
        on_standby: Callable[[], None] = lambda: None,
        on_error: Callable[[str], None] = lambda message: None,
        describe: Callable[[BaseException], str] = _describe,
        logger: logging.Logger = _log,
    ) -> None:
        self.lease = lease
        self._log = logger
        self._event = event
        self._fields = dict(fields)
        self._count = count
        self._on_standby = on_standby
        self._on_error = on_error
        self._describe = describe
        self._clock = LeaseClock(max(lease.ttl, 1.0))
        self._holding = trio.CancelScope()

    @property
    def token(self) -> int | None:
        """The fencing token while the lease is held, else None."""
        return self.lease.token

    async def run(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run *work* whenever the lease is held, until cancelled (or until *work* returns).

        Never raises but what *work* raises and ``Cancelled``. Does not
        release the lease: call :meth:`release` when done (shielded, bounded).
        """
        while True:
            await self._acquire()
            async with trio.open_nursery() as nursery:
                self._holding = nursery.cancel_scope
                nursery.start_soon(self._keep)
                await work()
                nursery.cancel_scope.cancel()
                return

    async def confirm(self) -> None:
        """Return only while the lease is still ours; else stop the work (``Cancelled`` is delivered here).

        Call it right before a write that only the owner may make: a paused
        owner whose lease moved on must not write after the new one.
        Raises what Redis raises when it is unreachable.
        """
        if not await self.lease.still_owner():
            self._drop("lost")
            await trio.lowlevel.checkpoint()  # delivers the cancellation

    async def release(self) -> None:
        """Give the lease up if held (shielded, at most a second; never raises)."""
        if self.lease.value is not None:
            await self.lease.release()
            self._count("released")

    async def _acquire(self) -> None:
        backoff = Backoff(0.5, STANDBY_MAX_WAIT)
        lease = self.lease
        while True:
            sent_at = trio.current_time()
            try:
                held_for = await lease.try_acquire(take_over_own=True)
            except Exception as exc:  # Redis unreachable: ownership unknown, so do not work
                self._on_error(f"lease: {self._describe(exc)}")
                wait = backoff.failed(trio.current_time())
            else:
                if held_for is None:
                    self._clock = LeaseClock(lease.ttl)
                    # Trust counts from before the request was sent (conservative).
                    self._clock.confirmed(sent_at)
                    self._count("acquired")
                    if lease.took_over:
                        self._count("taken_over")
                        log.event(self._log, f"{self._event}.taken_over", level=logging.WARNING, **self._fields,
                                  token=lease.token, holder=lease.taken_from,
                                  note="held by an earlier life of this daemon instance: taken back at once")
                    log.event(self._log, f"{self._event}.acquired", **self._fields, token=lease.token)
                    return
                # Wake just after it can expire (jitter spreads competing standbys).
                wait = min(held_for + 0.01 + 0.05 * random.random(), STANDBY_MAX_WAIT, lease.ttl / 3)
            self._on_standby()
            await trio.sleep(wait)

    async def _keep(self) -> None:
        """Renew every ttl/3; stop the work as soon as ownership cannot be proven."""
        clock = self._clock
        reason = "lost"
        while True:
            next_at = trio.current_time() + clock.renew_every
            # Wake early enough to stop working before the lease could have expired.
            await trio.sleep_until(min(next_at, clock.valid_until))
            now = trio.current_time()
            if not clock.valid(now):
                reason = "expired"
                break
            try:
                with trio.move_on_at(clock.valid_until):
                    if await self.lease.renew():
                        clock.confirmed(now)
                        continue
                    break
                reason = "expired"
                break
            except Exception as exc:
                message = f"lease renewal: {self._describe(exc)}"
                self._on_error(message)
                log.event(self._log, f"{self._event}.renew_failed", level=logging.WARNING, **self._fields,
                          error=message)
        self._drop(reason)

    def _drop(self, reason: str) -> None:
        """Stop the work at once: the lease is lost (``lost``) or can no longer be trusted (``expired``)."""
        self._count(reason)
        log.event(self._log, f"{self._event}.lost", level=logging.WARNING, **self._fields, reason=reason,
                  token=self.lease.token, note="stopped; another daemon may own it now")
        self.lease.forget()
        self._holding.cancel()
