"""Gmail in one daemon: push ingress, history walks, watch renewers and the fetcher, behind the provider contract."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import trio

from ... import log
from ...ingress.lease import Lease, lease_keys
from ...ingress.supervisor import Supervisor
from ...ingress.webhook import Route, WebhookReply, WebhookRequest
from ...outcomes import TransientError
from ...provider import AccountBusy, Context, ReadinessCheck, Runtime
from ...store.oauth_tokens import DbRotatedTokens
from .accounts import GoogleAccount, HttpClients, build_account
from .config import DEFAULT_CERTS_URL
from .gmail_api import GmailError
from .renewer import LEASE_TTL, WatchRenewer
from .source import GmailSource
from .tokens import AuthFailure
from .verify import PushVerifier
from .walk import DbStoredDates, HistoryWalker
from .webhook import PushIngress

__all__ = ["ROUTE", "GoogleRuntime", "stop_watch", "unsubscribe_account"]

_log = log.get_logger("google")

ROUTE = Route("POST", "/webhooks/google")
#: One users.stop when an account leaves the configuration or on inboundctl unsubscribe.
STOP_TIMEOUT = 10.0


def accounts_from_config(cfg: Any, clients: HttpClients, rotated: Any,
                         keep: dict[str, GoogleAccount] | None = None) -> dict[str, GoogleAccount]:
    """The run-time accounts of *cfg*'s ``[[google]]`` tables; unchanged ones are taken from *keep*.

    Keeping the object keeps its cached token and its auth state across a reload.
    """
    keep = keep or {}
    accounts: dict[str, GoogleAccount] = {}
    for index, config in enumerate(getattr(cfg, "google", None) or []):
        secret = cfg.secret(f"google[{index}].credentials")
        account = build_account(config, secret.reveal() if secret else "", clients, rotated)
        old = keep.get(account.id)
        accounts[account.id] = old if old is not None and old.fingerprint() == account.fingerprint() else account
    return accounts


class GoogleRuntime(Runtime):
    """Every ``[[google]]`` account of one daemon; see the package docstring."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.clients = HttpClients()
        self.rotated = DbRotatedTokens(ctx.db)
        self.accounts = accounts_from_config(ctx.cfg, self.clients, self.rotated)
        self.walker = HistoryWalker(ctx.cursors, ctx.queue, DbStoredDates(ctx.db))
        self.source = GmailSource(self.accounts.values(), walker=self.walker)
        self.ingress = PushIngress(self._verifier(), ctx.queue, list(self.accounts.values()))
        self.renewers: Supervisor[str, GoogleAccount, WatchRenewer] = Supervisor(
            self.accounts, make=self._renewer, fingerprint=lambda account: account.fingerprint(),
        )

    def _verifier(self) -> PushVerifier:
        first = next(iter(self.accounts.values()), None)
        certs_url = first.config.certs_url if first else DEFAULT_CERTS_URL
        ca_file = first.config.ca_file if first else ""
        return PushVerifier(self.clients.async_client(ca_file), certs_url, {})

    def _renewer(self, account_id: str, account: GoogleAccount) -> WatchRenewer:
        lease = Lease(self.ctx.rio, lease_keys(self.ctx.key_prefix, "google", account_id),
                      instance=self.ctx.instance_id, ttl=LEASE_TTL)
        return WatchRenewer(account, walker=self.walker, lease=lease)

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.renewers.run(task_status=task_status)

    async def stop_intake(self) -> None:
        await self.renewers.drain()

    async def resume_intake(self) -> None:
        await self.renewers.resume()

    async def apply_config(self, cfg: Any) -> None:
        """New, changed and removed accounts; a removed account's watch is stopped (``users.stop``)."""
        old = self.accounts
        self.accounts = accounts_from_config(cfg, self.clients, self.rotated, keep=old)
        self.source.update(self.accounts.values())
        self.ingress.verifier.certs_url = next(
            (account.config.certs_url for account in self.accounts.values()), self.ingress.verifier.certs_url)
        self.ingress.update(list(self.accounts.values()))
        await self.renewers.update(self.accounts)
        removed = [old[key] for key in old if key not in self.accounts]
        if removed:
            async with trio.open_nursery() as nursery:
                for account in removed:
                    nursery.start_soon(self._stop_removed, account)
        self.renewers.kick()  # an auth_failed account retries at once after a reload

    async def _stop_removed(self, account: GoogleAccount) -> None:
        """users.stop for an account this daemon no longer has; never raises.

        When another daemon holds the account's lease (it still has the
        account), the watch is left alone: it renews it.
        """
        ctx = self.ctx
        log.event(_log, "google.account.removed", account=account.id)
        try:
            await stop_watch(account, ctx.rio, ctx.key_prefix, ctx.instance_id, reason="account_removed")
        except AccountBusy as exc:
            log.event(_log, "google.unsubscribe.skipped", level=logging.WARNING, account=account.id, note=str(exc))
        except Exception as exc:  # noqa: BLE001 - a reload must not fail on Redis trouble
            log.event(_log, "google.unsubscribe.failed", level=logging.WARNING, account=account.id,
                      error=f"{type(exc).__name__}: {exc}")

    def readiness(self) -> dict[str, ReadinessCheck]:
        """``google_certs``: pushes cannot be verified without Google's certificates (fetched on first need)."""
        if not self.accounts:
            return {}
        return {"google_certs": self.ingress.verifier.ready}

    async def handle(self, route: Route, request: WebhookRequest) -> WebhookReply:
        if route == ROUTE:
            return await self.ingress.handle(request)
        return await super().handle(route, request)

    async def status(self) -> dict[str, Any]:
        return {"gmail": [msgspec.to_builtins(renewer.status()) for _, renewer in self.renewers.tasks()]}

    def summary(self) -> str | None:
        if not len(self.renewers):
            return None
        states: dict[str, int] = {}
        for _, renewer in self.renewers.tasks():
            states[renewer.state] = states.get(renewer.state, 0) + 1
        return "gmail: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))

    async def aclose(self) -> None:
        try:
            await self.clients.aclose()
        except Exception as exc:  # noqa: BLE001 - closing sockets at exit
            log.event(_log, "google.close_failed", level=logging.WARNING, error=str(exc))


async def stop_watch(account: GoogleAccount, rio: Any, key_prefix: str, instance_id: str,
                     *, reason: str) -> list[tuple[str, str]]:
    """``users.stop`` for *account*, under its lease; one (what, outcome) pair: ``deleted`` or why it was kept.

    Raises :class:`~inboundd.provider.AccountBusy` when a running daemon
    holds the lease (it would call users.watch again), and what Redis raises.
    """
    lease = Lease(rio, lease_keys(key_prefix, "google", account.id), instance=instance_id, ttl=LEASE_TTL)
    what = f"Gmail watch of {account.config.email}"
    try:
        if await lease.try_acquire() is not None:
            raise AccountBusy(f"account {account.id!r} is owned by a running daemon, which renews its Gmail "
                              "watch: remove it from that daemon's configuration and reload (the watch is then "
                              "stopped), or stop the daemon first")
        with trio.move_on_after(STOP_TIMEOUT) as scope:
            try:
                await account.api.stop()
            except (GmailError, AuthFailure, TransientError) as exc:
                log.event(_log, "google.watch.stop_failed", level=logging.WARNING, account=account.id,
                          error=str(exc))
                return [(what, f"kept: {exc}")]
        if scope.cancelled_caught:
            return [(what, f"kept: no answer within {STOP_TIMEOUT:g}s")]
    finally:
        await lease.release()
    log.event(_log, "google.watch.stopped", account=account.id, reason=reason)
    return [(what, "deleted")]


async def unsubscribe_account(cfg: Any, account_id: str, rio: Any, db: Any) -> list[tuple[str, str]]:
    """``inboundctl unsubscribe``: stop the Gmail watch of the configured account *account_id*."""
    clients = HttpClients()
    try:
        account = accounts_from_config(cfg, clients, DbRotatedTokens(db))[account_id]
        return await stop_watch(account, rio, cfg.redis.key_prefix, cfg.daemon.instance_id, reason="inboundctl")
    finally:
        await clients.aclose()
