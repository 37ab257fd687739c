"""The pointer queue against a real redis-server: durability, fencing, reclaim, DLQ, redrive, stats."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest
import redis
import trio
from redis.crc import key_slot

from inboundd import clock, jobs, metrics
from inboundd.config import QueueConfig, RedisConfig
from inboundd.jobs import Job, MicrosoftPointer
from inboundd.queue import GROUP, Keys, Queue, QueueStopped, ReclaimTimer
from inboundd.redisio import RedisIO, parse_reply, unreachable

from fakes import imap_job, make_queue, metric_value
from waiting import eventually

CFG = QueueConfig(lease=0.3, max_attempts=3, backoff_base=0.01, backoff_cap=0.05, block=0.1,
                  reclaim_interval=0.05)


def stream_jobs(client: redis.Redis, key: str) -> list[Job]:
    return [jobs.decode(fields[b"job"]) for _, fields in client.xrange(key)]


async def idle_past_lease(client: redis.Redis, queue: Queue, entry_ids: list[str]) -> None:
    lease_ms = queue.cfg.lease * 1000

    def expired() -> bool:
        rows = client.xpending_range(queue.keys.stream, GROUP, "-", "+", 1000)
        idle = {r["message_id"].decode(): r["time_since_delivered"] for r in rows}
        return all(idle.get(i, 0) > lease_ms for i in entry_ids)

    await eventually(expired, 10, "leases to expire")


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize("prefix", ["inboundd", "prod:eu-1", "a.b_c"])
def test_all_keys_map_to_one_cluster_slot(prefix: str) -> None:
    keys = Keys.for_prefix(prefix)
    assert len({key_slot(k.encode()) for k in keys.all()}) == 1
    assert all(k.startswith("{" + prefix + "}:") for k in keys.all())


# --------------------------------------------------------------------------- enqueue


async def test_enqueue_is_durable_in_order_before_it_returns(rio: RedisIO, client: redis.Redis) -> None:
    queue = make_queue(rio, CFG)
    sent = [imap_job(uid) for uid in range(5)]
    ids = await queue.enqueue_many(sent[:3])
    ids += [await queue.enqueue(sent[3]), await queue.enqueue(sent[4])]
    assert [i.decode() for i, _ in client.xrange(queue.keys.stream)] == ids
    assert stream_jobs(client, queue.keys.stream) == sent


async def test_concurrent_enqueues_are_coalesced_into_few_pipelines(rio: RedisIO, client: redis.Redis) -> None:
    queue = make_queue(rio, CFG)
    before = metric_value(metrics.jobs_enqueued, "imap", "burst")
    results: dict[int, list[str]] = {}

    async def caller(n: int) -> None:
        results[n] = [await queue.enqueue(imap_job(n * 1000 + i, account="burst")) for i in range(20)]

    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        async with trio.open_nursery() as callers:
            for n in range(50):
                callers.start_soon(caller, n)
        nursery.cancel_scope.cancel()

    in_redis = {i.decode(): jobs.decode(f[b"job"]) for i, f in client.xrange(queue.keys.stream)}
    assert len(in_redis) == 1000
    for n, ids in results.items():  # every caller got the ids of its own jobs
        assert [in_redis[i].pointer.uid for i in ids] == [n * 1000 + i for i in range(20)]  # type: ignore[union-attr]
    # 1000 enqueues from 50 concurrent tasks cost ~20 waves of pipelines, not 1000 round trips.
    assert queue.enqueue_round_trips <= 100, queue.enqueue_round_trips
    assert metric_value(metrics.jobs_enqueued, "imap", "burst") - before == 1000


async def test_enqueue_against_a_stopped_redis_raises_for_every_caller(make_redis: Any) -> None:
    server = make_redis()
    io = RedisIO.from_config(RedisConfig(url=server.url, socket_timeout=1.0))
    queue = make_queue(io, CFG)
    failures_before = metric_value(metrics.enqueue_failures)
    outcomes: list[str] = []

    async def caller(uid: int) -> None:
        try:
            await queue.enqueue(imap_job(uid))
            outcomes.append("accepted")
        except redis.RedisError:
            outcomes.append("refused")

    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        server.stop()
        async with trio.open_nursery() as callers:
            for uid in range(10):
                callers.start_soon(caller, uid)
        nursery.cancel_scope.cancel()
    with pytest.raises(redis.RedisError):  # and without the batcher
        await queue.enqueue(imap_job(99))
    assert outcomes == ["refused"] * 10
    assert metric_value(metrics.enqueue_failures) - failures_before == 11
    server.start()
    await queue.ensure_group()
    assert (await queue.stats()).ready == 0
    await io.close()


async def test_a_batch_cancelled_before_its_write_fails_its_callers(rio: RedisIO, client: redis.Redis) -> None:
    """Shutdown while the batcher waits for a Redis thread (TLS Redis: no direct connection): the caller hears
    "not accepted", never hangs."""
    rio.direct = None
    queue = make_queue(rio, CFG)
    outcome: list[BaseException] = []
    async with trio.open_nursery() as callers:
        async with trio.open_nursery() as batcher:
            await batcher.start(queue.run)
            borrowers = [object() for _ in range(int(rio.limiter.total_tokens))]
            for borrower in borrowers:  # every Redis thread busy (blocked readers)
                await rio.limiter.acquire_on_behalf_of(borrower)
            callers.start_soon(_enqueue_noting_a_stop, queue, outcome)
            await eventually(lambda: not queue._requests and rio.limiter.statistics().tasks_waiting, 5,
                             "the batcher to take the request and wait for a thread")
            batcher.cancel_scope.cancel()
        await eventually(lambda: outcome, 5, "the caller to hear that its job was not accepted")
    for borrower in borrowers:
        rio.limiter.release_on_behalf_of(borrower)
    assert isinstance(outcome[0], QueueStopped)
    assert client.xlen(queue.keys.stream) == 0


async def _enqueue_noting_a_stop(queue: Queue, outcome: list[BaseException]) -> None:
    """Enqueue one job; a ``QueueStopped`` (nothing accepted) is noted in *outcome*."""
    try:
        await queue.enqueue(imap_job(1))
    except QueueStopped as exc:
        outcome.append(exc)


async def test_a_batch_cancelled_while_the_direct_connection_is_busy_fails_its_callers(
        rio: RedisIO, client: redis.Redis) -> None:
    queue = make_queue(rio, CFG)
    assert rio.direct is not None
    outcome: list[BaseException] = []
    async with trio.open_nursery() as callers:
        async with trio.open_nursery() as batcher:
            await batcher.start(queue.run)
            await rio.direct.lock.acquire()  # another command in flight on the connection
            callers.start_soon(_enqueue_noting_a_stop, queue, outcome)
            await eventually(lambda: not queue._requests and rio.direct.lock.statistics().tasks_waiting, 5,
                             "the batcher to take the request and wait for the connection")
            batcher.cancel_scope.cancel()
        await eventually(lambda: outcome, 5, "the caller to hear that its job was not accepted")
        rio.direct.lock.release()
    assert isinstance(outcome[0], QueueStopped)
    assert client.xlen(queue.keys.stream) == 0


async def test_the_batcher_writes_from_the_trio_thread_even_after_a_script_flush(
        rio: RedisIO, client: redis.Redis) -> None:
    queue = make_queue(rio, CFG)
    borrowers = [object() for _ in range(int(rio.limiter.total_tokens))]
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        for borrower in borrowers:  # no Redis thread to be had: the batcher must not need one
            await rio.limiter.acquire_on_behalf_of(borrower)
        sent = [imap_job(1), imap_job(2)]
        first = await queue.enqueue(sent[0])
        client.script_flush()  # a restarted or failed-over Redis has no scripts: EVALSHA → NOSCRIPT → EVAL
        second = await queue.enqueue(sent[1])
        nursery.cancel_scope.cancel()
    for borrower in borrowers:
        rio.limiter.release_on_behalf_of(borrower)
    assert [i.decode() for i, _ in client.xrange(queue.keys.stream)] == [first, second]
    assert stream_jobs(client, queue.keys.stream) == sent


async def test_the_direct_connection_authenticates_selects_its_db_and_reconnects_after_a_restart(
        make_redis: Any) -> None:
    server = make_redis()
    with redis.Redis(port=server.port) as plain:
        plain.config_set("requirepass", "s3cret")
    wrong = RedisIO.from_config(RedisConfig(url=f"redis://:nope@127.0.0.1:{server.port}/3", socket_timeout=1.0))
    with pytest.raises(redis.AuthenticationError):
        await wrong.call_direct("PING")
    io = RedisIO.from_config(RedisConfig(url=f"redis://:s3cret@127.0.0.1:{server.port}/3", socket_timeout=1.0))
    queue = make_queue(io, CFG)
    await queue.ensure_group()
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        await queue.enqueue(imap_job(1))
        server.stop()
        with pytest.raises(redis.ConnectionError):
            await queue.enqueue(imap_job(2))
        assert io.outage.down
        server.start()
        with redis.Redis(port=server.port) as plain:
            plain.config_set("requirepass", "s3cret")
        last = imap_job(3)
        await queue.enqueue(last)  # a new connection, authenticated and on db 3 again
        assert not io.outage.down
        nursery.cancel_scope.cancel()
    with redis.Redis(port=server.port, password="s3cret", db=3) as plain:
        assert stream_jobs(plain, queue.keys.stream) == [last]  # the server kept no data over its restart
    await io.close()
    await wrong.close()


REPLIES = [  # RESP2 bytes → (value, bytes used); None: more bytes needed
    (b"+OK\r\n", (b"OK", 5)),
    (b":42\r\n:1\r\n", (42, 5)),
    (b"$5\r\n1-0\r\n\r\n", (b"1-0\r\n", 11)),  # a bulk string may hold CRLF
    (b"$-1\r\n", (None, 5)),
    (b"*2\r\n$3\r\n1-0\r\n$3\r\n2-0\r\n", ([b"1-0", b"2-0"], 22)),
    (b"*2\r\n*1\r\n:1\r\n*0\r\n", ([[1], []], 16)),
    (b"*-1\r\n", (None, 5)),
    (b"+OK", None),
    (b"$5\r\n1-0\r", None),
    (b"*2\r\n$3\r\n1-0\r\n", None),
    (b"", None),
]


def test_resp_replies_parse_table() -> None:
    for data, expected in REPLIES:
        assert parse_reply(bytearray(data)) == expected, data
    error, used = parse_reply(b"-NOSCRIPT No matching script\r\n")  # type: ignore[misc]
    assert isinstance(error, redis.exceptions.NoScriptError) and str(error) == "No matching script" and used == 30
    error, _ = parse_reply(b"-ERR unknown command\r\n")  # type: ignore[misc]
    assert type(error) is redis.ResponseError and str(error) == "unknown command"
    # A Redis still loading its append-only file is unreachable for now, as on redis-py's own connections.
    error, _ = parse_reply(b"-LOADING Redis is loading the dataset in memory\r\n")  # type: ignore[misc]
    assert isinstance(error, redis.BusyLoadingError) and unreachable(error)
    with pytest.raises(redis.ConnectionError, match="unexpected reply"):
        parse_reply(b"HTTP/1.1 400\r\n")


def test_tls_redis_keeps_the_thread_path() -> None:
    assert RedisIO.from_config(RedisConfig(url="rediss://127.0.0.1:6380/0")).direct is None
    assert RedisIO.from_config(RedisConfig(url="unix:///run/redis.sock?db=2")).direct is not None


# --------------------------------------------------------------------------- fenced operations


async def test_ack_deletes_the_entry(rio: RedisIO, client: redis.Redis) -> None:
    queue = make_queue(rio, CFG)
    await queue.ensure_group()
    await queue.enqueue_many([imap_job(1), imap_job(2)])
    claimed = await queue.claim("c1", 10)
    assert [c.job.pointer.uid for c in claimed] == [1, 2]  # type: ignore[union-attr]
    assert await queue.ack("c1", claimed) == [True, True]
    assert client.xlen(queue.keys.stream) == 0
    assert client.xpending(queue.keys.stream, GROUP)["pending"] == 0


async def test_retry_lands_in_the_delayed_set_at_its_due_time(rio: RedisIO, client: redis.Redis) -> None:
    queue = make_queue(rio, CFG)
    await queue.ensure_group()
    await queue.enqueue(imap_job(1))
    (claimed,) = await queue.claim("c1", 10)
    retried = msgspec.structs.replace(claimed.job, attempt=1)
    before = clock.wall_ms()
    assert await queue.retry("c1", claimed, retried, 30.0, kind="error")
    after = clock.wall_ms()
    ((member, score),) = client.zrange(queue.keys.delayed, 0, -1, withscores=True)
    assert jobs.decode(member) == retried
    assert before + 30_000 <= score <= after + 30_000
    assert client.xlen(queue.keys.stream) == 0 and client.xpending(queue.keys.stream, GROUP)["pending"] == 0


async def test_a_stale_owner_can_neither_ack_nor_retry_nor_dead_letter(rio: RedisIO, client: redis.Redis) -> None:
    queue = make_queue(rio, CFG)
    await queue.ensure_group()
    await queue.enqueue(imap_job(1))
    (claimed,) = await queue.claim("slow", 10)
    await idle_past_lease(client, queue, [claimed.entry_id])
    stale_before = {op: metric_value(metrics.stale_owner, op) for op in ("ack", "retry", "dead_letter")}

    await ReclaimTimer(queue, queue.cfg, consumer="reclaimer").tick()  # the job goes back, attempt counted

    assert await queue.heartbeat("slow", [claimed.entry_id]) == [claimed.entry_id]
    assert await queue.ack("slow", [claimed]) == [False]
    assert not await queue.retry("slow", claimed, claimed.job, 0, kind="error")  # type: ignore[arg-type]
    assert not await queue.dead_letter("slow", claimed, reason="x", error="y", attempts=1)
    for op in stale_before:
        assert metric_value(metrics.stale_owner, op) - stale_before[op] == 1
    # Nothing was duplicated, requeued, delayed or dead-lettered by the stale owner.
    (only,) = stream_jobs(client, queue.keys.stream)
    assert (only.id, only.attempt) == (claimed.job.id, 1)  # type: ignore[union-attr]
    assert client.zcard(queue.keys.delayed) == 0 and client.xlen(queue.keys.dlq) == 0
    # The new owner acks normally.
    (again,) = await queue.claim("fresh", 10)
    assert await queue.ack("fresh", [again]) == [True]
    assert client.xlen(queue.keys.stream) == 0


async def test_heartbeat_keeps_a_live_lease_from_being_reclaimed(rio: RedisIO, client: redis.Redis) -> None:
    queue = make_queue(rio, CFG)
    await queue.ensure_group()
    await queue.enqueue(imap_job(1))
    (claimed,) = await queue.claim("busy", 10)
    timer = ReclaimTimer(queue, queue.cfg, consumer="reclaimer")
    with trio.move_on_after(1.0):  # three leases long, heartbeating every lease/3
        while True:
            assert await queue.heartbeat("busy", [claimed.entry_id]) == []
            await timer.tick()
            await trio.sleep(queue.cfg.lease / 3)
    assert await queue.ack("busy", [claimed]) == [True]


# --------------------------------------------------------------------------- reclaim


async def test_a_job_whose_worker_keeps_dying_ends_as_worker_lost(rio: RedisIO, client: redis.Redis) -> None:
    queue = make_queue(rio, CFG)  # max_attempts = 3
    await queue.ensure_group()
    job = imap_job(1)
    await queue.enqueue(job)
    timer = ReclaimTimer(queue, queue.cfg, consumer="reclaimer")
    deliveries = 0
    while client.xlen(queue.keys.dlq) == 0:
        assert deliveries < 10, "the poison pill loops forever"
        claimed = await queue.claim(f"doomed-{deliveries}", 10)  # claims, then "dies" holding it
        assert [c.job.id for c in claimed] == [job.id]  # type: ignore[union-attr]
        assert claimed[0].job.attempt == deliveries  # type: ignore[union-attr]
        deliveries += 1
        await idle_past_lease(client, queue, [claimed[0].entry_id])
        await timer.tick()
    assert deliveries == queue.cfg.max_attempts
    (letter,) = await queue.dead_letters()
    assert (letter.job_id, letter.reason, letter.attempts) == (job.id, "worker_lost", 3)
    # The DLQ keeps the payload as last delivered (two lost workers already counted in it).
    assert letter.job == msgspec.structs.replace(job, attempt=2) and "worker lost" in letter.last_error
    assert client.xlen(queue.keys.stream) == 0


async def test_undecodable_entries_found_by_the_reclaimer_are_dead_lettered(rio: RedisIO, client: redis.Redis) -> None:
    queue = make_queue(rio, CFG)
    await queue.ensure_group()
    client.xadd(queue.keys.stream, {"job": b'{"id":"x","body":"hello"}'})
    (claimed,) = await queue.claim("doomed", 10)
    await idle_past_lease(client, queue, [claimed.entry_id])
    await ReclaimTimer(queue, queue.cfg, consumer="reclaimer").tick()
    (letter,) = await queue.dead_letters()
    assert (letter.reason, letter.raw, letter.job) == ("invalid_payload", b'{"id":"x","body":"hello"}', None)
    assert "body" in letter.last_error


async def test_due_retries_are_promoted_in_due_time_order(rio: RedisIO, client: redis.Redis) -> None:
    queue = make_queue(rio, CFG)
    await queue.ensure_group()
    await queue.enqueue(imap_job(0))  # an older ready job stays ahead of promoted retries
    now = clock.wall_ms()
    for uid, due in [(3, now - 10), (1, now - 30), (9, now + 60_000), (2, now - 20)]:
        client.zadd(queue.keys.delayed, {jobs.encode(imap_job(uid)): due})
    assert await queue.promote_due() == 3
    assert [j.pointer.uid for j in stream_jobs(client, queue.keys.stream)] == [0, 1, 2, 3]  # type: ignore[union-attr]
    assert [jobs.decode(m).pointer.uid for m in client.zrange(queue.keys.delayed, 0, -1)] == [9]  # type: ignore[union-attr]


# --------------------------------------------------------------------------- dead letters, redrive, stats


async def dead_letter_all(queue: Queue, *sent: Job) -> None:
    await queue.enqueue_many(list(sent))
    for claimed in await queue.claim("c1", 100):
        await queue.dead_letter("c1", claimed, reason="max_attempts", error="ValueError: bad",
                                attempts=claimed.job.attempt + 3)  # type: ignore[union-attr]


async def test_dead_letters_keep_job_reason_error_attempts_and_time(rio: RedisIO) -> None:
    queue = make_queue(rio, CFG)
    await queue.ensure_group()
    a = jobs.new_job(MicrosoftPointer(account="m365", subscription_id="s", message_id="AAMk"), tenant="t")
    before_ms = clock.wall_ms()
    await dead_letter_all(queue, imap_job(1, account="a"), a)
    letters = await queue.dead_letters()
    assert [(d.account, d.provider, d.reason, d.last_error, d.attempts) for d in letters] == [
        ("a", "imap", "max_attempts", "ValueError: bad", 3), ("m365", "microsoft", "max_attempts", "ValueError: bad", 3)]
    # The time is kept to the millisecond, cut (never rounded up into the future).
    assert all(before_ms / 1000 <= d.dead_at <= clock.wall() for d in letters)
    assert letters[1].job == a and jobs.decode(letters[1].raw) == a
    assert [d.job_id for d in await queue.dead_letters(account="m365")] == [a.id]
    assert len(await queue.dead_letters(limit=1)) == 1


async def test_a_capped_dlq_logs_and_counts_every_eviction(rio: RedisIO, client: redis.Redis) -> None:
    queue = make_queue(rio, CFG, dlq_maxlen=2)
    await queue.ensure_group()
    evicted_before = metric_value(metrics.dlq_evicted)
    first, *rest = [imap_job(uid) for uid in range(3)]
    await dead_letter_all(queue, first, *rest)
    assert [d.job_id for d in await queue.dead_letters()] == [j.id for j in rest]
    assert metric_value(metrics.dlq_evicted) - evicted_before == 1


async def test_redrive_dry_run_by_id_by_account_and_all_reset_attempts(rio: RedisIO, client: redis.Redis) -> None:
    queue = make_queue(rio, CFG)
    await queue.ensure_group()
    a1, a2, b1, b2 = imap_job(1, "a"), imap_job(2, "a"), imap_job(3, "b"), imap_job(4, "b")
    await dead_letter_all(queue, a1, a2, b1, b2)
    client.xadd(queue.keys.dlq, {"job": b"garbage", "reason": "invalid_payload"})

    assert await queue.redrive(all=True, dry_run=True) == 4
    assert await queue.redrive(account="a", dry_run=True) == 2
    assert client.xlen(queue.keys.dlq) == 5 and client.xlen(queue.keys.stream) == 0  # dry run changed nothing

    assert await queue.redrive(job_ids=[b2.id, "no-such-job"]) == 1
    assert await queue.redrive(account="a") == 2
    assert await queue.redrive(all=True) == 1
    assert await queue.redrive(all=True) == 0
    back = stream_jobs(client, queue.keys.stream)
    assert [j.id for j in back] == [b2.id, a1.id, a2.id, b1.id]
    assert all((j.attempt, j.transient) == (0, 0) for j in back)
    assert [d.reason for d in await queue.dead_letters()] == ["invalid_payload"]  # left where it is
    with pytest.raises(ValueError):
        await queue.redrive(all=True, account="a")


async def test_stats_are_exact_for_a_known_state(rio: RedisIO, client: redis.Redis) -> None:
    queue = make_queue(rio, CFG)
    empty = await queue.stats()  # no stream, no group: the CLI may ask before the daemon ever ran
    assert (empty.ready, empty.in_flight, empty.delayed, empty.dead, empty.oldest_ready_age) == (0, 0, 0, 0, None)
    await queue.ensure_group()
    await queue.enqueue_many([imap_job(uid) for uid in range(4)])
    c1 = await queue.claim("c1", 2)
    await queue.claim("c2", 1)
    await queue.enqueue_many([imap_job(uid) for uid in range(10, 13)])
    await queue.retry("c1", c1[0], c1[0].job, 60, kind="error")  # type: ignore[arg-type]
    client.xadd(queue.keys.dlq, {"job": b"x"})
    stats = await queue.refresh_gauges()
    assert (stats.ready, stats.in_flight, stats.delayed, stats.dead) == (4, 2, 1, 1)
    assert stats.in_flight_by_consumer == {"c1": 1, "c2": 1}
    assert stats.consumers == 2
    assert stats.oldest_ready_age is not None and 0 <= stats.oldest_ready_age < 5
    assert metrics.queue_ready._value.get() == 4 and metrics.queue_dead._value.get() == 1
    assert not math.isnan(stats.oldest_ready_age)


async def test_a_retry_is_promoted_when_it_is_due_not_on_the_next_reclaim_tick(rio: RedisIO, client: redis.Redis) -> None:
    """reclaim_interval is 30 s: a retry due in 0.3 s (scheduled while the promoter sleeps) and one due in 1 s
    are each back in the stream within a moment of their due time."""
    queue = make_queue(rio, QueueConfig(lease=30, block=0.1, reclaim_interval=30))
    await queue.ensure_group()
    async with trio.open_nursery() as nursery:
        await nursery.start(ReclaimTimer(queue, queue.cfg, consumer="reclaimer").run)
        await queue.enqueue_many([imap_job(1), imap_job(2)])
        first, second = await queue.claim("worker", 10)
        scheduled = trio.current_time()   # before the retries: each is due no sooner than this plus its delay
        assert await queue.retry("worker", second, second.job, 1.0, kind="error")
        assert await queue.retry("worker", first, first.job, 0.3, kind="error")   # sooner than the planned wake
        back: dict[str, float] = {}

        async def claim_back() -> bool:
            for item in await queue.claim("worker", 10, block=0):
                back[item.job.id] = trio.current_time() - scheduled
            return len(back) == 2

        await eventually(claim_back, 5, "both retries back in the stream")
        nursery.cancel_scope.cancel()
    # The slack allows a loaded machine; the behaviour this replaced waited for the 30 s reclaim tick.
    slack = 3.0
    assert 0.3 <= back[first.job.id] < 0.3 + slack and 1.0 <= back[second.job.id] < 1.0 + slack, back
