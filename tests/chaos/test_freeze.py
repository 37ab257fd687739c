"""A dependency that stops answering without closing anything: noticed within the timeouts, named, recovered from.

The real daemon reaches Redis, PostgreSQL and Dovecot each through a
loopback proxy (:class:`imap_helpers.BlackHoleProxy`). While mail flows
into two mailboxes, one proxy *freezes*: it keeps accepting and keeps every
connection open, but forwards nothing either way — no FIN, no RST, the
kind of failure only a timeout can see (a partition, a wedged server, a
vanished NAT entry). Then it resumes. For each dependency in turn:

* ``/readyz`` answers 503 naming the frozen dependency within a bound
  derived from the configured timeouts (the daemon does not hang on a
  read without a deadline);
* the daemon keeps running (no restart), and once the proxy resumes
  ``/readyz`` answers 200 again and every message appended is stored
  exactly once, none dead-lettered.

Each scenario adds a row to the Reliability table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from chaos.mailflow import MailFlow, stored_count, stored_message_ids, tally
from chaos.reliability import Row
from daemon_harness import DaemonProcess, imap_section, ledger_counts, queue_stats
from imap_helpers import BlackHoleProxy
from inboundd.daemon import POSTGRES_CHECK_TIMEOUT
from inboundd.web import READINESS_TIMEOUT
from waiting import eventually

#: The daemon's timeouts in these runs (written into its configuration below).
REDIS_SOCKET_TIMEOUT = 0.6        # daemon_harness: redis.socket_timeout = "600ms"
IMAP_READ_TIMEOUT = 2.0
IMAP_EXAMINE_INTERVAL = 2.0
PROCESSING_LEASE = 10.0
#: Polling /readyz, scheduling on a loaded 2-core machine: added to every bound.
SLACK = 3.0
#: How soon /readyz must name the frozen dependency, from the moment it froze.
NOTICE_WITHIN = {
    # a probe's PING fails at the socket timeout, and no probe waits longer than READINESS_TIMEOUT
    "redis": min(REDIS_SOCKET_TIMEOUT, READINESS_TIMEOUT) + SLACK,
    # the probe gives PostgreSQL POSTGRES_CHECK_TIMEOUT to answer
    "postgres": POSTGRES_CHECK_TIMEOUT + SLACK,
    # an idling listener EXAMINEs every examine_interval and waits read_timeout for the answer
    "imap": IMAP_EXAMINE_INTERVAL + IMAP_READ_TIMEOUT + SLACK,
}
#: How long the dependency stays frozen after /readyz named it (the daemon keeps running meanwhile).
HOLD = 3.0
#: From the resume to /readyz 200 and every message appended so far stored: the slowest retry after a failure
#: is a consumer's Redis backoff (5 s at most); the leases (30 s) are never waited out.
RECOVER_WITHIN = 20.0


NAMES = {"redis": "Redis", "postgres": "PostgreSQL", "imap": "IMAP (Dovecot)"}


def proxied_url(url: str, port: int, proxy: BlackHoleProxy) -> str:
    assert f":{port}/" in url, url
    return url.replace(f":{port}/", f":{proxy.port}/")


#: The longest /readyz took to answer in the current scenario (seconds).
slowest_readyz: list[float] = []


async def readyz(daemon: DaemonProcess) -> tuple[int, dict[str, Any]]:
    started = time.monotonic()
    response = await trio.to_thread.run_sync(lambda: daemon.get("/readyz", timeout=10))
    slowest_readyz.append(time.monotonic() - started)
    return response.status_code, response.json()


@pytest.mark.parametrize("frozen", ["redis", "postgres", "imap"])
async def test_a_frozen_dependency_is_named_by_readyz_within_its_timeouts_and_recovered_from(
        frozen: str, daemon_factory, redis_server, pg_server, redis_url, pg_dsn, dovecot, tmp_path: Path,
        reliability) -> None:
    users = [dovecot.take() for _ in range(2)]
    slowest_readyz.clear()
    async with trio.open_nursery() as nursery:
        proxies = {"redis": BlackHoleProxy(redis_server.port), "postgres": BlackHoleProxy(pg_server.port),
                   "imap": BlackHoleProxy(dovecot.port)}
        for proxy in proxies.values():
            await nursery.start(proxy.run)
        accounts = "".join(
            imap_section(tmp_path, proxies["imap"].port, user, password, account=f"box{i}", start_from='"all"',
                         lease='"30s"', read_timeout=f'"{IMAP_READ_TIMEOUT:g}s"',
                         examine_interval=f'"{IMAP_EXAMINE_INTERVAL:g}s"')
            for i, (user, password) in enumerate(users))
        daemon: DaemonProcess = daemon_factory(
            proxied_url(redis_url, redis_server.port, proxies["redis"]),
            proxied_url(pg_dsn, pg_server.port, proxies["postgres"]),
            daemon_section="consumers = 2",
            extra_config=accounts + f'[processing]\nlease = "{PROCESSING_LEASE:g}s"\n')
        daemon.start(wait_ready=False)
        await eventually(lambda: daemon.notify.seen("READY", "1"), 60, "READY=1 from the daemon")
        flow = MailFlow(dovecot.port, users, batch=4, interval=0.4).start()
        try:
            await eventually(lambda: stored_count(pg_dsn) >= 8, 30, "mail flowing into the store")

            proxies[frozen].freeze()
            frozen_at = trio.current_time()

            async def names_it() -> dict[str, Any] | None:
                status, body = await readyz(daemon)
                return body if status == 503 and frozen in body.get("failed", []) else None

            body = await eventually(names_it, NOTICE_WITHIN[frozen], f"/readyz to answer 503 naming {frozen}",
                                    interval=0.1)
            noticed = trio.current_time() - frozen_at
            print(f"\n{frozen} frozen: /readyz named it after {noticed:.2f}s: {body['checks'][frozen]}")
            await trio.sleep(HOLD)   # the fault's duration, not a wait for a condition
            assert daemon.process is not None and daemon.process.poll() is None, "the daemon died"

            proxies[frozen].resume()
            resumed_at = trio.current_time()
            appended_before_resume = flow.appended

            async def recovered() -> bool:
                status, body = await readyz(daemon)
                if status != 200:
                    raise RuntimeError(f"/readyz {status}: {body.get('checks')}")  # "not yet", and why
                stored = set(await trio.to_thread.run_sync(stored_message_ids, pg_dsn))
                missing = set(appended_before_resume) - stored
                if missing:
                    raise RuntimeError(f"{len(missing)} of {len(appended_before_resume)} messages not stored yet")
                return True

            await eventually(recovered, RECOVER_WITHIN, f"/readyz 200 and the mail stored after {frozen} resumed",
                             interval=0.1)
            recovery = trio.current_time() - resumed_at
        finally:
            flow.stop()
            await trio.to_thread.run_sync(flow.join, 60)
        expected = flow.appended
        await eventually(lambda: stored_count(pg_dsn) >= len(expected), 30, f"all {len(expected)} messages stored")
        result = tally(expected, await trio.to_thread.run_sync(stored_message_ids, pg_dsn))
        dead = (await trio.to_thread.run_sync(queue_stats, redis_url)).dead
        ledger = await trio.to_thread.run_sync(ledger_counts, pg_dsn)
        await trio.to_thread.run_sync(daemon.stop)
        nursery.cancel_scope.cancel()

    print(f"{frozen}: noticed after {noticed:.2f}s, slowest /readyz {max(slowest_readyz):.2f}s, recovered {recovery:.2f}s after the resume; "
          f"{result.stored} of {result.expected} stored; ledger {ledger}; dead-lettered {dead}")
    reliability.add(Row(
        scenario=f"{NAMES[frozen]} frozen (no answer, no close)",
        faults=f"1 freeze of {noticed + HOLD:.0f} s", messages=result.expected, lost=len(result.lost),
        duplicated=len(result.duplicated), dead_lettered=dead, worst_recovery=recovery,
        recovery_means="proxy resumed → /readyz 200 and every message appended before it stored"))
    # Each check has READINESS_TIMEOUT: /readyz answers within it, however the dependency fails.
    assert max(slowest_readyz) < READINESS_TIMEOUT + 1.0, f"/readyz took {max(slowest_readyz):.2f}s"
    assert not result.lost and not result.duplicated and not result.unexpected, result
    assert dead == 0
    assert set(ledger) == {"processed"}, ledger
