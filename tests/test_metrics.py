"""/metrics: Prometheus naming conventions, and counters that match the work a running daemon did."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from inboundd import metrics
from waiting import wait_for

NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
#: Units a histogram or a unit-suffixed gauge may end with (base units only).
BASE_UNITS = ("_seconds", "_bytes", "_ratio")


def families() -> dict:
    return {family.name: family for family in metrics.REGISTRY.collect()}


def test_names_follow_prometheus_conventions() -> None:
    found = families()
    ours = {name: fam for name, fam in found.items() if name.startswith("inboundd_")}
    assert len(ours) >= 20
    problems = []
    for name, family in ours.items():
        if not NAME.match(name):
            problems.append(f"{name}: not snake_case")
        if not family.documentation.strip():
            problems.append(f"{name}: no help text")
        if family.type == "counter" and name.endswith("_total"):
            problems.append(f"{name}: counter family name already carries _total")  # exposed as name_total
        if family.type == "gauge" and name.endswith(("_total", "_count", "_sum", "_bucket")):
            problems.append(f"{name}: gauge with a counter/histogram suffix")
        if family.type == "histogram" and not name.endswith(BASE_UNITS):
            problems.append(f"{name}: histogram without a base unit suffix")
        if re.search(r"_(ms|milliseconds|minutes|kb|mb)(_|$)", name):
            problems.append(f"{name}: not a base unit")
    for collector, labels in metrics.REGISTRY._collector_to_names.items():  # label names of every metric
        for label in getattr(collector, "_labelnames", ()):
            if not NAME.match(label) or label in ("le", "quantile") or label.startswith("__"):
                problems.append(f"{labels}: bad label name {label!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("name", "kind", "labels"),
    [
        ("inboundd_jobs_enqueued", "counter", {"provider", "account"}),
        ("inboundd_jobs_claimed", "counter", {"provider", "account"}),
        ("inboundd_jobs_acked", "counter", {"provider", "account"}),
        ("inboundd_jobs_retried", "counter", {"provider", "account", "kind"}),
        ("inboundd_jobs_dead_lettered", "counter", {"provider", "account", "reason"}),
        ("inboundd_jobs_reclaimed", "counter", set()),
        ("inboundd_ledger_outcomes", "counter", {"provider", "account", "outcome", "reason"}),
        ("inboundd_processing_seconds", "histogram", {"provider"}),
        ("inboundd_end_to_end_seconds", "histogram", {"provider"}),
        ("inboundd_queue_ready", "gauge", set()),
        ("inboundd_queue_in_flight", "gauge", set()),
        ("inboundd_queue_delayed", "gauge", set()),
        ("inboundd_queue_dead", "gauge", set()),
        ("inboundd_listeners", "gauge", {"state"}),
    ],
)
def test_the_issue_s_metrics_exist(name: str, kind: str, labels: set[str]) -> None:
    collectors = {n: c for c, names in metrics.REGISTRY._collector_to_names.items() for n in names}
    family = families()[name]
    assert family.type == kind
    collector = collectors[name if kind != "counter" else f"{name}_total"]
    assert set(getattr(collector, "_labelnames", ())) == labels


def test_process_metrics_are_exported() -> None:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    names = {s.name for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
            "process_start_time_seconds", "python_info"} <= names


def test_exposition_has_no_created_series() -> None:
    """``*_created`` doubles every counter series; scrapers of the text format do not need it."""
    body, _ = metrics.render()
    assert "_created" not in body.decode()


# --------------------------------------------------------------------------- scraped from a running daemon


def test_scraped_counters_match_the_work_done(daemon_factory, redis_url, pg_dsn, dovecot, imap_user,
                                              tmp_path: Path) -> None:
    """5 messages arrive in a watched mailbox: /metrics parses and counts exactly that work."""
    import httpx

    from daemon_harness import imap_section, ledger_counts, sample_sum, scrape
    from imap_helpers import append_subjects

    user, password = imap_user
    daemon = daemon_factory(redis_url, pg_dsn, extra_config=imap_section(tmp_path, dovecot.port, user, password))
    daemon.start()
    wait_for(lambda: sample_sum(scrape(daemon), "inboundd_listeners", state="idle") == 1, 30, what="listener idle")
    append_subjects(dovecot.port, user, password, [f"metrics {n}" for n in range(5)])
    wait_for(lambda: ledger_counts(pg_dsn) == {"processed": 5}, 60, what="5 messages processed")
    wait_for(lambda: sample_sum(scrape(daemon), "inboundd_jobs_acked_total", account="support") == 5, 30,
             what="5 acks counted")

    response = httpx.get(daemon.url + "/metrics", timeout=10)
    assert response.headers["content-type"].startswith("text/plain")
    samples = scrape(daemon)
    job = {"provider": "imap", "account": "support"}
    assert sample_sum(samples, "inboundd_jobs_enqueued_total", **job) == 5
    assert sample_sum(samples, "inboundd_jobs_claimed_total", **job) == 5
    assert sample_sum(samples, "inboundd_jobs_acked_total", **job) == 5
    assert sample_sum(samples, "inboundd_ledger_outcomes_total", outcome="processed", **job) == 5
    assert sample_sum(samples, "inboundd_jobs_dead_lettered_total") == 0
    assert sample_sum(samples, "inboundd_jobs_retried_total") == 0
    assert sample_sum(samples, "inboundd_processing_seconds_count", provider="imap") == 5
    assert sample_sum(samples, "inboundd_end_to_end_seconds_count", provider="imap") == 5
    assert sample_sum(samples, "inboundd_end_to_end_seconds_sum", provider="imap") > 0
    assert sample_sum(samples, "inboundd_queue_ready") == 0 and sample_sum(samples, "inboundd_queue_in_flight") == 0
    assert sample_sum(samples, "inboundd_queue_dead") == 0
    assert sample_sum(samples, "inboundd_listeners", state="idle") == 1
    assert sample_sum(samples, "process_resident_memory_bytes") > 0
    assert sample_sum(samples, "process_cpu_seconds_total") > 0
