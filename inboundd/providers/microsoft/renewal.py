"""Subscription decisions without I/O: create, renew, recreate or wait, and until when.

The renewer (one per account and folder) keeps one Graph subscription alive.
It asks :func:`plan_subscription` what to do with what is stored and what the
configuration wants, at a given time, and sleeps until the plan's ``at``.
Table-tested in ``tests/test_microsoft_pure.py``.

Rules (../shared/PROVIDERS-NOTES.md A1, A6):

* an Outlook message subscription lives at most 4230 minutes; a request
  beyond that is refused, so the requested expiry is capped a little below
  it (our clock and Graph's differ); Graph raises anything under 45 minutes
  to 45 minutes;
* renew at half-life with a PATCH of ``expirationDateTime`` (which also
  reauthorizes), so a failed renewal has the other half to be retried;
* an expired subscription is gone (Graph deletes it): create a new one and
  reconcile with delta, since notifications were lost meanwhile;
* ``notificationUrl``/``lifecycleNotificationUrl``/``resource`` cannot all
  be changed with PATCH (the lifecycle URL cannot be at all): a subscription
  whose URLs or resource differ from the configuration is recreated.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "CLOCK_MARGIN",
    "MAX_LIFETIME",
    "MIN_LIFETIME",
    "Desired",
    "Plan",
    "Stored",
    "effective_lifetime",
    "plan_subscription",
    "renew_at",
    "requested_expiry",
]

#: The Outlook maximum: 4230 minutes (Graph documentation, subscription lifetime table).
MAX_LIFETIME = 4230 * 60.0
#: Graph raises shorter lifetimes to 45 minutes.
MIN_LIFETIME = 45 * 60.0
#: Our clock and Graph's may disagree by this much; requested expiries stay this far below
#: the maximum, and a subscription this close to its expiry counts as expired.
CLOCK_MARGIN = 120.0


def effective_lifetime(configured: float) -> float:
    """The lifetime actually requested for *configured* seconds: within [45 min, 4230 min − margin]."""
    return min(max(configured, MIN_LIFETIME), MAX_LIFETIME - CLOCK_MARGIN)


def requested_expiry(now: float, lifetime: float) -> float:
    """The ``expirationDateTime`` to ask for at *now* (epoch seconds)."""
    return now + effective_lifetime(lifetime)


class Stored(msgspec.Struct, frozen=True, kw_only=True):
    """A subscription as recorded after Graph confirmed it."""

    subscription_id: str
    resource: str
    notification_url: str
    lifecycle_url: str
    #: Epoch seconds: the expiry Graph returned, and when that expiry was set.
    expires_at: float
    renewed_at: float


class Desired(msgspec.Struct, frozen=True, kw_only=True):
    """What the configuration asks for."""

    resource: str
    notification_url: str
    lifecycle_url: str


def renew_at(stored: Stored) -> float:
    """Half-life: halfway between when the expiry was set and the expiry."""
    return stored.renewed_at + max(stored.expires_at - stored.renewed_at, 0.0) / 2


class Plan(msgspec.Struct, frozen=True):
    """What to do now (``wait``: nothing until ``at``), why, and whether delta must reconcile."""

    action: Literal["create", "recreate", "renew", "wait"]
    reason: str
    #: Epoch seconds of the next decision (for ``wait``), or *now*.
    at: float
    #: Notifications may have been lost: run a delta reconciliation once the subscription is back.
    resync: bool = False


def plan_subscription(stored: Stored | None, desired: Desired, now: float) -> Plan:
    """Decide what to do with the subscription of one (account, folder) at *now*."""
    if stored is None:
        return Plan("create", "none", now)
    if (stored.resource, stored.notification_url, stored.lifecycle_url) != (
        desired.resource, desired.notification_url, desired.lifecycle_url
    ):
        # Recreated while the old one still runs: no notification is lost in between.
        return Plan("recreate", "config_changed", now)
    if stored.expires_at <= now + CLOCK_MARGIN:
        return Plan("recreate", "expired", now, resync=True)
    due = renew_at(stored)
    if now >= due:
        return Plan("renew", "half_life", now)
    return Plan("wait", "fresh", due)
