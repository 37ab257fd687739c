"""This daemon's ledger claims: their tokens, which of them a live task still holds, and their lease.

A job's ledger claim (``store/ledger.py``) is held under a token
``"<instance>:<life><n>"``: the daemon's ``instance_id``, 8 hex digits naming
this life of the process, and 8 more for the claim. Because ``instance_id``
is unique per host and stable across restarts (the control-socket lock
keeps two daemons of one instance apart), every token of the instance that
no task of this life holds belongs to a dead holder:

* **At start** (:meth:`Claims.run`), every row an earlier life left
  ``processing`` is taken back at once (``ledger.take_back`` → ``failed``):
  the queue re-delivers its job and the next claim takes it over, instead of
  waiting for the dead holder's lease to run out. A zombie of that life (a
  process that was only paused) finds its row no longer its own.
* **While running** (:meth:`Claims.is_dead`), a claim that finds a row held
  by a token of this instance that no task holds any more (its task ended
  without recording the failure, say PostgreSQL was cut off) takes it over
  at once, fenced on that token (``ledger.claim(dead_holder=...)``).

**Leases are short and renewed.** ``processing.lease`` is how long a *dead*
holder blocks a message. While a job runs, :meth:`Claims.run` renews the
lease of every claim this daemon holds, in one statement every lease / 3.
A claim whose lease could not be confirmed for a lease (minus a margin,
counted from the sending of its last successful renewal: PostgreSQL may
have let another daemon take it over) has its work cancelled
(:attr:`Held.scope`); its writes would be fenced anyway.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import trio

from . import log, metrics
from .backoff import Backoff
from .ingress.lease_clock import LeaseClock
from .store import ledger
from .store.db import Database

__all__ = ["Claims", "Held", "TAKEN_BACK"]

_log = log.get_logger("claims")

#: ``last_error`` of a row taken back at start.
TAKEN_BACK = "holder died: taken back at start"
#: Retry of the take-back at start while PostgreSQL does not answer (seconds; doubling, no jitter).
TAKE_BACK_RETRY_BASE, TAKE_BACK_RETRY_CAP = 0.5, 10.0


class Held:
    """One claim token held by a live task (from before its claim is sent until the task ends).

    ``scope`` wraps the job's work after the claim: :class:`Claims` cancels it
    when the claim's lease can no longer be trusted, ``lost`` then says why.
    """

    def __init__(self, token: str, lease: float) -> None:
        self.token = token
        self.scope = trio.CancelScope()
        self.lost: str | None = None
        self._clock: LeaseClock | None = None
        self._lease = lease
        self._released = False

    @property
    def renewing(self) -> bool:
        """Whether the row is ours in the ledger and its lease must be kept."""
        return self._clock is not None and not self._released

    def claimed(self, sent_at: float) -> None:
        """The claim sent at *sent_at* (trio clock) succeeded: renew its lease from now on."""
        self._clock = LeaseClock(self._lease)
        self._clock.confirmed(sent_at)

    def released(self) -> None:
        """The row is no longer ours to keep (stored, skipped, failed recorded): stop renewing."""
        self._released = True

    def _renewed(self, sent_at: float) -> None:
        if self._clock is not None:
            self._clock.confirmed(sent_at)

    def _valid_until(self) -> float:
        return self._clock.valid_until if self._clock is not None else float("inf")


class Claims:
    """The claim tokens of this daemon instance; see the module docstring.

    Run :meth:`run` in the daemon's nursery for the take-back at start and
    the renewals; without it (tests, tools) claims are simply not renewed.
    """

    def __init__(self, db: Database, instance: str, lease: float, *, life: str | None = None) -> None:
        self.db = db
        self.instance = instance
        self.lease = lease
        self.life = life or secrets.token_hex(4)
        self._held: dict[str, Held] = {}

    # ------------------------------------------------------------------ tokens

    def new_token(self) -> str:
        """A fresh claim token of this life: ``"<instance>:<life><random>"``."""
        return ledger.owner_token(self.instance, self.life + secrets.token_hex(4))

    @contextmanager
    def hold(self, token: str) -> Iterator[Held]:
        """Mark *token* as held by the calling task until the block ends.

        Enter it before the claim is sent: a token seen in the ledger while
        its task runs is then always known live.
        """
        held = Held(token, self.lease)
        self._held[token] = held
        try:
            yield held
        finally:
            del self._held[token]

    def is_dead(self, holder: str | None) -> bool:
        """Whether *holder* is a claim token of this instance that no live task holds (an earlier life's, or
        one whose task ended without releasing its row)."""
        return ledger.is_instance_token(holder, self.instance) and holder not in self._held

    def live(self) -> list[str]:
        """Tokens whose rows are ours and whose leases are kept (for status and tests)."""
        return [token for token, held in self._held.items() if held.renewing]

    # ------------------------------------------------------------------ the keeper

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take back what earlier lives left, then renew held leases every lease / 3, until cancelled.

        Reports started at once: a take-back that cannot reach PostgreSQL is
        retried in the background (claims meanwhile take such rows over one
        by one, :meth:`is_dead`). Never raises but ``Cancelled``.
        """
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._take_back)
            await self._renew_loop()

    async def _take_back(self) -> None:
        retry = Backoff(TAKE_BACK_RETRY_BASE, TAKE_BACK_RETRY_CAP, jitter="none")
        keep = f"{self.instance}:{self.life}"
        while True:
            try:
                rows = await self.db.run(lambda conn: ledger.take_back(conn, self.instance, keep=keep,
                                                                       error=TAKEN_BACK), timeout=self.lease)
                break
            except psycopg.Error as exc:
                delay = retry.failed()
                log.event(_log, "ledger.take_back_failed", level=logging.WARNING, error=str(exc), retry_in=delay)
                await trio.sleep(delay)
        for row in rows:
            metrics.ledger_takeovers.labels("taken_back_at_start").inc()
            log.event(_log, "ledger.take_over", level=logging.WARNING, reason="taken_back_at_start",
                      account=row.account, identity=row.identity, job_id=row.job_id, holder=row.lease_owner,
                      attempts=row.attempts)
        log.event(_log, "ledger.taken_back", rows=len(rows), instance=self.instance, life=self.life)

    async def _renew_loop(self) -> None:
        interval = self.lease / 3
        next_renewal = trio.current_time() + interval
        while True:
            # A claim made meanwhile is trusted for most of a lease from its sending: it cannot
            # expire before the next renewal unless the claim itself took that long.
            await trio.sleep_until(min([next_renewal] + [h._valid_until() for h in self._held.values()
                                                         if h.renewing]))
            now = trio.current_time()
            if now >= next_renewal:
                next_renewal = now + interval
                await self._renew(now, timeout=interval)
            self._expire(trio.current_time())

    async def _renew(self, sent_at: float, *, timeout: float) -> None:
        tokens = [token for token, held in self._held.items() if held.renewing]
        if not tokens:
            return
        try:
            renewed = await self.db.run(lambda conn: ledger.renew(conn, tokens, self.lease), timeout=timeout)
        except psycopg.Error as exc:
            metrics.ledger_lease_events.labels("renew_failed").inc()
            log.event(_log, "ledger.renew_failed", level=logging.WARNING, claims=len(tokens),
                      error=f"{type(exc).__name__}: {exc}")
            return
        for token in renewed:
            held = self._held.get(token)
            if held is not None:
                held._renewed(sent_at)
        log.event(_log, "ledger.renew", level=logging.DEBUG, claims=len(tokens), renewed=len(renewed))

    def _expire(self, now: float) -> None:
        for held in list(self._held.values()):
            if held.renewing and held.lost is None and now >= held._valid_until():
                held.lost = f"lease not confirmed for {self.lease:g}s"
                metrics.ledger_lease_events.labels("expired").inc()
                log.event(_log, "ledger.lease_lost", level=logging.WARNING, holder=held.token, reason=held.lost,
                          note="the job's work is cancelled; its writes are fenced")
                held.scope.cancel()
