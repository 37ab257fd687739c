"""Which subscriptions are ours, and their secrets: what the webhook checks a notification against.

The renewer of each account records every subscription it creates or renews
(:meth:`SubscriptionBook.put`), so the daemon that owns an account answers
its notifications from memory. A notification for a subscription this daemon
has not seen (another daemon behind the same public URL owns the account, or
this one just restarted) is looked up in ``inbound_graph_subscriptions``, one
query per POST whatever its batch size; ids found in neither are remembered
as unknown for :data:`NEGATIVE_TTL` seconds, so a flood of forged ids costs
one query each at most that often.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import trio

from ...store import graph_subscriptions as rows
from ...store.graph_subscriptions import SubscriptionRow
from .webhook import SubscriptionRef

__all__ = ["NEGATIVE_TTL", "SubscriptionBook"]

#: An unknown subscription id is not looked up again for this long.
NEGATIVE_TTL = 10.0
#: At most this many unknown ids are remembered (forgeries must not grow memory without bound).
NEGATIVE_MAX = 10_000


class SubscriptionBook:
    """Subscription id → :class:`SubscriptionRef`, from memory, else from PostgreSQL.

    *tenant_ids* gives the tenant ids an account's notifications may carry,
    or None for an account this daemon does not have (its subscriptions are
    then unknown: a removed account's notifications are refused).
    """

    def __init__(self, db: Any, tenant_ids: Callable[[str], frozenset[str] | None]) -> None:
        self.db = db
        self._tenant_ids = tenant_ids
        self._known: dict[str, SubscriptionRef] = {}
        self._unknown: dict[str, float] = {}

    def put(self, row: SubscriptionRow) -> None:
        """Remember a subscription the renewer created, renewed or read."""
        ref = self._ref(row)
        if ref is not None:
            self._known[row.subscription_id] = ref
            self._unknown.pop(row.subscription_id, None)

    def forget(self, subscription_id: str) -> None:
        """A subscription that is gone (deleted, replaced): its notifications are refused from now on."""
        self._known.pop(subscription_id, None)

    def forget_account(self, account: str) -> None:
        for subscription_id in [s for s, ref in self._known.items() if ref.account == account]:
            del self._known[subscription_id]

    def _ref(self, row: SubscriptionRow) -> SubscriptionRef | None:
        tenant_ids = self._tenant_ids(row.account)
        if tenant_ids is None:
            return None
        if row.tenant_id:
            tenant_ids = tenant_ids | {row.tenant_id.lower()}
        return SubscriptionRef(row.subscription_id, row.account, row.folder, row.client_state, tenant_ids)

    async def lookup(self, subscription_ids: Iterable[str]) -> Mapping[str, SubscriptionRef]:
        """The known subscriptions among *subscription_ids*; at most one database query.

        Raises what the database raises when it is unreachable (the caller
        answers 503: Graph retries, nothing is lost).
        """
        wanted = set(subscription_ids)
        found = {s: self._known[s] for s in wanted if s in self._known}
        now = trio.current_time()
        missing = [s for s in wanted - found.keys() if self._unknown.get(s, float("-inf")) <= now]
        if missing:
            stored = await self.db.run(rows.by_ids, missing)
            for row in stored:
                ref = self._ref(row)
                if ref is not None:
                    self._known[row.subscription_id] = found[row.subscription_id] = ref
            if len(self._unknown) > NEGATIVE_MAX:
                self._unknown = {s: t for s, t in self._unknown.items() if t > now}
            for subscription_id in missing:
                if subscription_id not in found and len(self._unknown) < NEGATIVE_MAX:
                    self._unknown[subscription_id] = now + NEGATIVE_TTL
        return found

