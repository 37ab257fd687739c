"""Microsoft Graph in one daemon, behind the provider contract.

* the webhook routes (:mod:`.ingress`), answering Graph's POSTs;
* one :class:`~.renewer.AccountRenewer` per account under the ingress
  supervisor (subscriptions and delta, by the account's lease owner);
* a poller that wakes local renewers for lifecycle requests another daemon's
  webhook recorded;
* the consume-time source (:mod:`.source`);
* on reload, an account that left the configuration has its subscriptions
  deleted at Graph (by whoever can take its lease), so Graph stops calling.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import msgspec
import trio

from ... import log, metrics
from ...ingress.httpclients import HttpClients
from ...ingress.lease import Lease, lease_keys
from ...ingress.supervisor import Supervisor
from ...ingress.webhook import Route, WebhookReply, WebhookRequest
from ...provider import AccountBusy, Context, Runtime
from ...store import graph_subscriptions as rows
from .account import MicrosoftAccount, build_accounts
from .book import SubscriptionBook
from .graph import GraphError
from .ingress import WebhookHandler
from .lifecycle import LifecycleRequests
from .renewer import LEASE_TTL, AccountRenewer, RenewerDeps
from .source import MicrosoftSource

__all__ = ["MicrosoftRuntime", "REQUEST_POLL", "delete_subscriptions", "unsubscribe_account"]

_log = log.get_logger("microsoft")

#: How often a daemon looks for lifecycle requests recorded by another daemon's webhook.
REQUEST_POLL = 2.0

#: The supervisor's spec of one account: the account and the public URL its subscriptions call.
_Spec = tuple[MicrosoftAccount, str]


class MicrosoftRuntime(Runtime):
    """Every ``[[microsoft]]`` account of one daemon; see the module docstring."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.clients = HttpClients()
        self.accounts: dict[str, MicrosoftAccount] = build_accounts(ctx.cfg, self.clients)
        self.book = SubscriptionBook(ctx.db, self._tenant_ids)
        self.requests = LifecycleRequests(ctx.rio, ctx.key_prefix)
        self.deps = RenewerDeps(
            db=ctx.db, rio=ctx.rio, queue=ctx.queue, cursors=ctx.cursors, book=self.book, requests=self.requests,
            key_prefix=ctx.key_prefix, instance_id=ctx.instance_id, public_url=ctx.cfg.http.public_url,
            intake_open=ctx.intake_open,
        )
        self.supervisor: Supervisor[str, _Spec, AccountRenewer] = Supervisor(
            self._specs(), make=lambda key, spec: AccountRenewer(spec[0], replace(self.deps, public_url=spec[1])),
            fingerprint=lambda spec: (spec[0].fingerprint(), spec[1]),
        )
        self.source = MicrosoftSource(lambda: self.accounts)
        self.webhooks = WebhookHandler(accounts=lambda: self.accounts, book=self.book, queue=ctx.queue,
                                       requests=self.requests, wake=self._wake)

    def _specs(self) -> dict[str, _Spec]:
        return {account_id: (account, self.deps.public_url) for account_id, account in self.accounts.items()}

    def _tenant_ids(self, account_id: str) -> frozenset[str] | None:
        account = self.accounts.get(account_id)
        return account.tenant_ids() if account is not None else None

    def renewers(self) -> dict[str, AccountRenewer]:
        return dict(self.supervisor.tasks())

    def _wake(self, account_id: str) -> None:
        renewer = self.renewers().get(account_id)
        if renewer is not None:
            renewer.wake()

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.supervisor.run)
            nursery.start_soon(self._poll_requests)
            task_status.started()

    async def _poll_requests(self) -> None:
        """Wake the local owner of every account another daemon's webhook recorded a request for."""
        while True:
            await trio.sleep(REQUEST_POLL)
            if not self.accounts:
                continue
            try:
                pending = await self.requests.pending_accounts()
            except Exception as exc:  # noqa: BLE001 - Redis away: the renewers' own rounds go on
                log.event(_log, "microsoft.requests.poll_failed", level=logging.DEBUG, error=str(exc))
                continue
            for account_id in pending:
                self._wake(account_id)

    async def stop_intake(self) -> None:
        await self.supervisor.drain()

    async def resume_intake(self) -> None:
        await self.supervisor.resume()

    async def apply_config(self, cfg: Any) -> None:
        """New, changed and removed accounts; a removed account's subscriptions are deleted at Graph."""
        old = self.accounts
        fresh = build_accounts(cfg, self.clients)
        # An unchanged account keeps its object: its tokens, and its pause if its secret is still wrong.
        self.accounts = {key: old[key] if key in old and old[key].fingerprint() == account.fingerprint()
                         else account for key, account in fresh.items()}
        self.deps = replace(self.deps, public_url=cfg.http.public_url)
        await self.supervisor.update(self._specs())
        for account_id, account in old.items():
            if account_id not in self.accounts:
                self.book.forget_account(account_id)
                await self.unsubscribe(account)

    async def unsubscribe(self, account: MicrosoftAccount) -> None:
        """Delete the subscriptions of an account this daemon no longer has (reload); never raises.

        When another daemon holds the account's lease (it still has the
        account), nothing is deleted. A subscription left behind expires by
        itself and its notifications are refused (unknown subscription).
        """
        try:
            await delete_subscriptions(account, self.ctx.rio, self.ctx.db, self.ctx.key_prefix,
                                       self.ctx.instance_id, reason="account_removed")
        except AccountBusy as exc:
            log.event(_log, "microsoft.unsubscribe.skipped", level=logging.WARNING, account=account.id,
                      note=str(exc))
        except Exception as exc:  # noqa: BLE001 - a reload must not fail on Redis or PostgreSQL trouble
            log.event(_log, "microsoft.unsubscribe.failed", level=logging.WARNING, account=account.id,
                      error=f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ routes and reporting

    async def handle(self, route: Route, request: WebhookRequest) -> WebhookReply:
        return await self.webhooks.handle(request)

    async def status(self) -> dict[str, Any]:
        folders = [msgspec.to_builtins(item) for _, renewer in self.supervisor.tasks() for item in renewer.status()]
        return {"microsoft": folders} if folders or self.accounts else {}

    def summary(self) -> str | None:
        if not self.accounts:
            return None
        states: dict[str, int] = {}
        for _, renewer in self.supervisor.tasks():
            states[renewer.state] = states.get(renewer.state, 0) + 1
        return "microsoft: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))

    async def refresh_gauges(self) -> None:
        for _, renewer in self.supervisor.tasks():
            renewer.refresh_gauges()

    async def aclose(self) -> None:
        await self.clients.aclose()


async def delete_subscriptions(account: MicrosoftAccount, rio: Any, db: Any, key_prefix: str, instance_id: str,
                               *, reason: str) -> list[tuple[str, str]]:
    """Delete every stored subscription of *account* at Graph and in PostgreSQL, under the account's lease.

    Returns one (what, outcome) pair per subscription: ``deleted``, ``gone``
    (Graph no longer had it) or the error that kept it. Raises
    :class:`~inboundd.provider.AccountBusy` when a running daemon holds the
    lease (it would renew them), and what Redis or PostgreSQL raise.
    """
    lease = Lease(rio, lease_keys(key_prefix, "microsoft", account.id), instance=instance_id, ttl=LEASE_TTL)
    results: list[tuple[str, str]] = []
    try:
        if await lease.try_acquire() is not None:
            raise AccountBusy(f"account {account.id!r} is owned by a running daemon, which renews its "
                              "subscriptions: remove it from that daemon's configuration and reload (its "
                              "subscriptions are then deleted), or stop the daemon first")
        stored = [row for row in await db.run(rows.list_all) if row.account == account.id]
        for row in stored:
            what = f"{row.folder} subscription {row.subscription_id}"
            try:
                existed = await account.graph.delete_subscription(row.subscription_id)
            except GraphError as exc:
                log.event(_log, "microsoft.subscription.delete_failed", level=logging.WARNING, account=account.id,
                          folder=row.folder, subscription_id=row.subscription_id, error=str(exc))
                results.append((what, f"kept: {exc}"))
                continue
            await db.run(rows.delete, row.account, row.folder, row.subscription_id)
            metrics.microsoft_subscription_events.labels(account.id, "deleted").inc()
            log.event(_log, "microsoft.subscription.delete", account=account.id, folder=row.folder,
                      subscription_id=row.subscription_id, reason=reason)
            results.append((what, "deleted" if existed else "gone"))
    finally:
        await lease.release()
    return results


async def unsubscribe_account(cfg: Any, account_id: str, rio: Any, db: Any) -> list[tuple[str, str]]:
    """``inboundctl unsubscribe``: delete the Graph subscriptions of the configured account *account_id*."""
    clients = HttpClients()
    try:
        account = build_accounts(cfg, clients)[account_id]
        return await delete_subscriptions(account, rio, db, cfg.redis.key_prefix, cfg.daemon.instance_id,
                                          reason="inboundctl")
    finally:
        await clients.aclose()
