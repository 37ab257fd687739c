"""The one metrics registry (Prometheus).

Every operational event is counted here; modules import the metric objects
they need. Names follow Prometheus conventions (``_total`` counters,
``_seconds`` histograms, base units).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR

__all__ = ["REGISTRY", "child", "render"]

# ``*_created`` series (OpenMetrics) would double every counter series in the text format.
from prometheus_client import disable_created_metrics  # noqa: E402

disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

_JOB = ["provider", "account"]

jobs_enqueued = Counter("inboundd_jobs_enqueued_total", "Jobs durably enqueued", _JOB, registry=REGISTRY)
enqueue_failures = Counter("inboundd_enqueue_failures_total", "Enqueue attempts Redis did not acknowledge", registry=REGISTRY)
jobs_claimed = Counter("inboundd_jobs_claimed_total", "Jobs claimed by a consumer", _JOB, registry=REGISTRY)
jobs_acked = Counter("inboundd_jobs_acked_total", "Jobs acknowledged and removed", _JOB, registry=REGISTRY)
jobs_retried = Counter("inboundd_jobs_retried_total", "Jobs scheduled for a retry", _JOB + ["kind"], registry=REGISTRY)
jobs_dead_lettered = Counter(
    "inboundd_jobs_dead_lettered_total", "Jobs moved to the dead-letter stream", _JOB + ["reason"], registry=REGISTRY
)
jobs_skipped = Counter(
    "inboundd_skipped_total", "Jobs whose message was deliberately skipped (deleted, moved, UIDVALIDITY changed, "
    "oversize), by reason", _JOB + ["reason"], registry=REGISTRY,
)
jobs_reclaimed = Counter("inboundd_jobs_reclaimed_total", "Expired leases reclaimed", registry=REGISTRY)
jobs_promoted = Counter("inboundd_jobs_promoted_total", "Delayed retries promoted to the stream", registry=REGISTRY)
jobs_redriven = Counter("inboundd_jobs_redriven_total", "Dead-lettered jobs moved back to the stream", registry=REGISTRY)
stale_owner = Counter(
    "inboundd_stale_owner_total", "Ack/retry/dead-letter refused because the lease moved", ["operation"], registry=REGISTRY
)
dlq_evicted = Counter("inboundd_dlq_evicted_total", "Dead-letter entries evicted by dlq_maxlen", registry=REGISTRY)
ledger_outcomes = Counter(
    "inboundd_ledger_outcomes_total", "Processing outcomes recorded in the ledger", _JOB + ["outcome", "reason"], registry=REGISTRY
)
ledger_takeovers = Counter(
    "inboundd_ledger_takeovers_total", "Ledger claims taken over at once from a dead holder of this daemon instance "
    "(taken_back_at_start: an earlier life's; holder_gone: a task of this life that ended without releasing it)",
    ["reason"], registry=REGISTRY,
)
ledger_lease_events = Counter(
    "inboundd_ledger_lease_events_total", "Ledger lease renewals that failed (renew_failed) and claims whose work "
    "was stopped because their lease could not be confirmed (expired)", ["event"], registry=REGISTRY,
)
dependency_outages = Counter(
    "inboundd_dependency_outages_total", "Times a dependency every job needs (postgres, redis) stopped answering",
    ["dependency"], registry=REGISTRY,
)
dependency_waits = Counter(
    "inboundd_dependency_waits_total",
    "Waits for a dependency to answer: jobs a consumer kept, IMAP sessions that ended on it and reconnect after it",
    ["dependency"], registry=REGISTRY,
)
batch_fallbacks = Counter(
    "inboundd_batch_fallbacks_total", "Batch store transactions that failed and were redone one message at a time",
    registry=REGISTRY,
)
processing_seconds = Histogram(
    "inboundd_processing_seconds", "Time to process one job (fetch, parse, store; a job handled in a batch counts "
    "the batch's time)", ["provider"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
end_to_end_seconds = Histogram(
    "inboundd_end_to_end_seconds", "Time from enqueue to ack", ["provider"], registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
queue_ready = Gauge("inboundd_queue_ready", "Jobs waiting in the stream", registry=REGISTRY)
queue_in_flight = Gauge("inboundd_queue_in_flight", "Jobs claimed and not yet acknowledged", registry=REGISTRY)
queue_delayed = Gauge("inboundd_queue_delayed", "Jobs waiting for their retry time", registry=REGISTRY)
queue_dead = Gauge("inboundd_queue_dead", "Jobs in the dead-letter stream", registry=REGISTRY)
listeners = Gauge("inboundd_listeners", "IMAP listeners by state", ["state"], registry=REGISTRY)
listener_reconnects = Counter(
    "inboundd_listener_reconnects_total", "IMAP listener reconnects", ["account", "folder"], registry=REGISTRY
)

# IMAP (providers/imap_*): listener events, consume-time fetches, post-actions.
_MAILBOX = ["account", "folder"]
imap_pointers_enqueued = Counter(
    "inboundd_imap_pointers_enqueued_total", "Pointer jobs IMAP listeners had acknowledged by Redis", _MAILBOX,
    registry=REGISTRY,
)
imap_uidvalidity_changes = Counter(
    "inboundd_imap_rescans_total", "Full folder rescans (UIDVALIDITY changed, UIDNEXT went back)", _MAILBOX,
    registry=REGISTRY,
)
imap_auth_failures = Counter("inboundd_imap_auth_failures_total", "IMAP logins rejected by the server", ["account"],
                             registry=REGISTRY)
imap_lease_events = Counter(
    "inboundd_imap_lease_events_total", "Mailbox ownership lease events (acquired, taken_over: acquired from "
    "an earlier life of this daemon instance, released, lost, expired)",
    ["event"], registry=REGISTRY,
)
imap_fetches = Counter(
    "inboundd_imap_fetches_total", "Consume-time IMAP fetches by outcome (fetched or the skip reason)",
    ["account", "outcome"], registry=REGISTRY,
)
imap_fetch_seconds = Histogram(
    "inboundd_imap_fetch_seconds", "Time to fetch one message from IMAP (connection from the pool included)",
    registry=REGISTRY, buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
)
imap_post_actions = Counter(
    "inboundd_imap_post_actions_total", "Post-actions after commit (seen, move, delete) by outcome",
    ["account", "action", "outcome"], registry=REGISTRY,
)

webhook_errors = Counter(
    "inboundd_webhook_errors_total", "Webhook requests whose provider handler raised (answered 500), by provider and "
    "route", ["provider", "route"], registry=REGISTRY,
)

# Microsoft Graph (providers/microsoft): webhook items, subscriptions, delta, fetches, post-actions.
microsoft_notifications = Counter(
    "inboundd_microsoft_notifications_total",
    "Graph notification items by outcome (accepted, lifecycle, or why refused); account empty when unknown",
    ["account", "outcome"], registry=REGISTRY,
)
microsoft_webhook_seconds = Histogram(
    "inboundd_microsoft_webhook_seconds", "Time to answer one Graph notification POST (enqueue included)",
    registry=REGISTRY, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
microsoft_subscription_events = Counter(
    "inboundd_microsoft_subscription_events_total",
    "Subscription operations (created, renewed, recreated, deleted) by account",
    ["account", "event"], registry=REGISTRY,
)
microsoft_renew_failures = Counter(
    "inboundd_microsoft_renew_failures_total", "Subscription creations and renewals that failed", ["account"],
    registry=REGISTRY,
)
microsoft_subscription_expiry = Gauge(
    "inboundd_microsoft_subscription_expiry_seconds",
    "Seconds until the folder's Graph subscription expires (negative: expired; absent: none)", _MAILBOX,
    registry=REGISTRY,
)
microsoft_lifecycle_events = Counter(
    "inboundd_microsoft_lifecycle_events_total", "Lifecycle events received (reauthorizationRequired, …)",
    ["account", "event"], registry=REGISTRY,
)
microsoft_delta_walks = Counter(
    "inboundd_microsoft_delta_walks_total", "Delta reconciliations by reason (first_start, resume, sync_reset)",
    ["account", "reason"], registry=REGISTRY,
)
microsoft_delta_enqueued = Counter(
    "inboundd_microsoft_delta_enqueued_total", "Pointer jobs a delta reconciliation had acknowledged by Redis",
    _MAILBOX, registry=REGISTRY,
)
microsoft_lease_events = Counter(
    "inboundd_microsoft_lease_events_total", "Account ownership lease events (acquired, released, lost, expired)",
    ["event"], registry=REGISTRY,
)
microsoft_fetches = Counter(
    "inboundd_microsoft_fetches_total", "Consume-time $value fetches by outcome (fetched, the skip reason, "
    "throttled, unavailable, auth_failed, error)", ["account", "outcome"], registry=REGISTRY,
)
microsoft_post_actions = Counter(
    "inboundd_microsoft_post_actions_total", "Post-actions after commit (mark_read, move) by outcome",
    ["account", "action", "outcome"], registry=REGISTRY,
)

# Deliveries to [[deliver]] targets (inboundd/deliver/).
deliveries_delivered = Counter(
    "inboundd_deliveries_delivered_total", "Deliveries a target accepted (a Python handler: committed with its message)",
    ["target"], registry=REGISTRY,
)
deliveries_failed = Counter(
    "inboundd_deliveries_failed_total", "Delivery attempts that failed, by what follows (retry or dead)",
    ["target", "outcome"], registry=REGISTRY,
)
delivery_seconds = Histogram(
    "inboundd_delivery_seconds", "Time of one delivery request, answered or not", ["target"], registry=REGISTRY,
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
delivery_pauses = Counter(
    "inboundd_delivery_pauses_total", "Times a target was found unavailable and held back", ["target"],
    registry=REGISTRY,
)
deliveries_pending = Gauge("inboundd_deliveries_pending", "Deliveries not yet delivered nor dead", ["target"],
                           registry=REGISTRY)
deliveries_dead = Gauge("inboundd_deliveries_dead", "Deliveries that gave up (inboundctl redeliver)", ["target"],
                        registry=REGISTRY)

# Gmail (providers/google/): pushes, history walks, watches, consume-time fetches, post-actions.
google_pushes = Counter(
    "inboundd_google_pushes_total",
    "Pub/Sub pushes to /webhooks/google by outcome (enqueued, rejected, ignored, unavailable) and reason",
    ["outcome", "reason"], registry=REGISTRY,
)
google_walks = Counter(
    "inboundd_google_walks_total",
    "History walk jobs by result (walked, covered: the cursor was already past, joined: a walk was in flight, "
    "resync: the cursor was stale)", ["account", "result"], registry=REGISTRY,
)
google_pointers_enqueued = Counter(
    "inboundd_google_pointers_enqueued_total", "Message pointer jobs history walks had acknowledged by Redis",
    ["account"], registry=REGISTRY,
)
google_walk_dropped = Counter(
    "inboundd_google_walk_dropped_total", "Added messages a walk did not enqueue (skip label, not watched)",
    ["account", "reason"], registry=REGISTRY,
)
google_watch_renewals = Counter(
    "inboundd_google_watch_renewals_total", "users.watch calls by outcome (ok, error, auth_failed)",
    ["account", "outcome"], registry=REGISTRY,
)
google_watch_expiry = Gauge(
    "inboundd_google_watch_expiry_timestamp_seconds", "When the mailbox's Gmail watch expires (epoch seconds)",
    ["account"], registry=REGISTRY,
)
google_watch_renewed = Gauge(
    "inboundd_google_watch_last_renewal_timestamp_seconds", "Last successful users.watch (epoch seconds)",
    ["account"], registry=REGISTRY,
)
google_fetches = Counter(
    "inboundd_google_fetches_total", "Consume-time Gmail fetches by outcome (fetched or the skip reason)",
    ["account", "outcome"], registry=REGISTRY,
)
google_auth_failures = Counter(
    "inboundd_google_auth_failures_total", "Gmail credentials or permissions refused, by Google's reason",
    ["account", "reason"], registry=REGISTRY,
)
google_post_actions = Counter(
    "inboundd_google_post_actions_total", "Post-actions after commit (mark_read, archive, label) by outcome",
    ["account", "action", "outcome"], registry=REGISTRY,
)
google_lease_events = Counter(
    "inboundd_google_lease_events_total", "Watch ownership lease events (acquired, released, lost, expired)",
    ["event"], registry=REGISTRY,
)


_children: dict[tuple[object, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, resolved once per label set and then kept.

    ``labels()`` validates and locks on every call, which is a quarter of a
    no-op job's cost in the consumer loop; hot paths call this instead. The
    cache grows with the label sets in use, as the metric's own children do.
    """
    key = (metric, labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def render() -> tuple[bytes, str]:
    """The exposition body and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
