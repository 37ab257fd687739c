"""From a push to stored messages: the history walk on real Redis and PostgreSQL, Google faked on loopback.

Operator stories: a push walks every page and each message is stored once;
sent mail and drafts never become jobs; a burst of pushes costs one walk; a
cursor Gmail forgot is replaced by a bounded resync without a gap; walkers
racing on one mailbox never move its cursor backwards.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
import trio

from fakes import metric_value
from google_helpers import MAILBOX, gmail_bed
from inboundd import metrics
from inboundd.jobs import Job
from inboundd.outcomes import Outcome, TransientError
from inboundd.providers.google.walk import HistoryWalker
from waiting import eventually


@pytest.fixture
async def bed(fake_google, rio, redis_url, pg_dsn):
    async with gmail_bed(fake_google, rio, redis_url, pg_dsn) as gmail:
        gmail.add_account()
        yield gmail


async def test_a_push_walks_three_pages_and_each_message_is_stored_once(bed, fake_google):
    await bed.set_cursor(fake_google.mailbox(MAILBOX).history_id)
    fake_google.page_size = 2
    sent = [fake_google.add_message(MAILBOX, subject=f"Ticket {n}") for n in range(6)]
    push = bed.push_job(fake_google.mailbox(MAILBOX).history_id)

    outcome = await bed.processor.handle(push)

    assert outcome == Outcome("processed", "history_walked")
    assert fake_google.count("history") == 3
    assert [job.pointer.message_id for job in bed.message_jobs()] == sent
    assert all(job.tenant == "acme" and job.pointer.email == MAILBOX for job in bed.message_jobs())
    assert await bed.cursor() == fake_google.mailbox(MAILBOX).history_id
    await bed.process_all()
    assert bed.stored() == [(message_id, f"Ticket {n}") for n, message_id in enumerate(sent)]
    # Pub/Sub redelivers: the same push again is covered by the cursor, no Gmail call, nothing new.
    assert await bed.processor.handle(push) == Outcome("processed", "history_covered")
    assert fake_google.count("history") == 3 and len(bed.stored()) == 6


async def test_a_walk_interrupted_after_a_page_resumes_from_that_page(bed, fake_google):
    start = fake_google.mailbox(MAILBOX).history_id
    await bed.set_cursor(start)
    fake_google.page_size = 2
    sent = [fake_google.add_message(MAILBOX) for _ in range(5)]
    fake_google.fail("GET", r"/history$", 503, {"error": {"code": 503, "errors": [{"reason": "backendError"}]}},
              after=1)  # the first page answers, the second fails
    with pytest.raises(TransientError):
        await bed.processor.handle(bed.push_job(fake_google.mailbox(MAILBOX).history_id))
    # The first page's two messages are queued and the cursor stands at its last record.
    assert [job.pointer.message_id for job in bed.message_jobs()] == sent[:2]
    assert await bed.cursor() == start + 2
    await bed.processor.handle(bed.push_job(fake_google.mailbox(MAILBOX).history_id))
    assert [job.pointer.message_id for job in bed.message_jobs()] == sent
    assert await bed.cursor() == fake_google.mailbox(MAILBOX).history_id


@pytest.mark.parametrize("label_ids", [["INBOX"], []], ids=["watching INBOX", "watching the whole mailbox"])
async def test_sent_mail_and_drafts_never_become_jobs(bed, fake_google, label_ids):
    account = bed.accounts["support-gmail"]
    account.config.label_ids = label_ids
    await bed.set_cursor(fake_google.mailbox(MAILBOX).history_id)
    wanted = fake_google.add_message(MAILBOX, subject="From a customer")
    fake_google.add_message(MAILBOX, labels=("SENT",), subject="Our reply")
    fake_google.add_message(MAILBOX, labels=("INBOX", "SENT"), subject="Sent to ourselves")
    fake_google.add_message(MAILBOX, labels=("DRAFT",), subject="Half-written")
    fake_google.add_message(MAILBOX, labels=("DRAFT", "INBOX"), subject="Draft in the inbox")
    fake_google.add_message(MAILBOX, labels=("SPAM",), subject="Buy now")
    dropped_before = metric_value(metrics.google_walk_dropped, "support-gmail", "label:SENT")

    await bed.processor.handle(bed.push_job(fake_google.mailbox(MAILBOX).history_id))
    await bed.process_all()

    assert [job.pointer.message_id for job in bed.message_jobs()] == [wanted]
    assert bed.stored() == [(wanted, "From a customer")]
    assert metric_value(metrics.google_walk_dropped, "support-gmail", "label:SENT") > dropped_before


async def test_fifty_pushes_in_one_second_cost_one_walk(bed, fake_google):
    await bed.set_cursor(fake_google.mailbox(MAILBOX).history_id)
    sent = [fake_google.add_message(MAILBOX, subject=f"Burst {n}") for n in range(10)]
    base = fake_google.mailbox(MAILBOX).history_id - 10
    # Gmail sends a push per change, each with the historyId right after it; Pub/Sub may repeat some.
    pushes = [bed.push_job(base + 1 + n % 10) for n in range(50)]
    started = time.monotonic()
    await bed.queue.enqueue_many(pushes)
    assert time.monotonic() - started < 1.0
    async with bed.consumers(count=4):
        await eventually(lambda: len(bed.stored()) == 10, 20, "the ten messages to be stored")
        await bed.wait_settled()
    assert fake_google.count("history") == 1
    assert sorted(message_id for message_id, _ in bed.stored()) == sorted(sent)
    assert len(bed.message_jobs()) == 0  # consumed: acknowledged and deleted


async def test_a_push_arriving_during_a_walk_makes_it_walk_once_more(bed, fake_google):
    account = bed.accounts["support-gmail"]
    await bed.set_cursor(fake_google.mailbox(MAILBOX).history_id)
    first = fake_google.add_message(MAILBOX)
    walker = bed.walker
    in_walk, release = trio.Event(), trio.Event()
    enqueue = bed.queue.enqueue_many

    async def slow_enqueue(jobs: Sequence[Job]) -> list[str]:
        in_walk.set()
        await release.wait()
        return await enqueue(jobs)

    walker.queue.enqueue_many = slow_enqueue  # type: ignore[method-assign]
    results = []
    async with trio.open_nursery() as nursery:
        async def push(history_id: int) -> None:
            results.append(await walker.on_push(account, history_id))

        nursery.start_soon(push, fake_google.mailbox(MAILBOX).history_id)
        await in_walk.wait()
        second = fake_google.add_message(MAILBOX)  # arrives after the walk read the history
        await push(fake_google.mailbox(MAILBOX).history_id)
        assert results == ["joined"]
        release.set()
    assert results == ["joined", "walked"]
    assert fake_google.count("history") == 2
    assert [job.pointer.message_id for job in bed.message_jobs()] == [first, second]


async def test_a_stale_cursor_resyncs_without_a_gap_and_without_old_mail(bed, fake_google):
    day = 86400 * 1000
    now_ms = int(time.time() * 1000)
    old = fake_google.add_message(MAILBOX, subject="Old, before inboundd", internal_ms=now_ms - 3 * day)
    await bed.set_cursor(fake_google.mailbox(MAILBOX).history_id)
    before = [fake_google.add_message(MAILBOX, subject=f"Stored {n}", internal_ms=now_ms - 2 * day + n) for n in range(2)]
    await bed.processor.handle(bed.push_job(fake_google.mailbox(MAILBOX).history_id))
    await bed.process_all()
    stale_cursor = await bed.cursor()
    # The daemon is away for a while: Gmail forgets the history after the cursor, and mail keeps coming.
    missed = [fake_google.add_message(MAILBOX, subject=f"While away {n}", internal_ms=now_ms - day + n) for n in range(3)]
    fake_google.forget_history(MAILBOX)
    later = fake_google.add_message(MAILBOX, subject="After the forgetting", internal_ms=now_ms)
    resyncs_before = metric_value(metrics.google_walks, "support-gmail", "resync")

    await bed.processor.handle(bed.push_job(fake_google.mailbox(MAILBOX).history_id))
    await bed.process_all()

    assert metric_value(metrics.google_walks, "support-gmail", "resync") == resyncs_before + 1
    assert len(fake_google.calls_to("GET", r"/messages$")) == 1
    stored = [message_id for message_id, _ in bed.stored()]
    assert sorted(stored) == sorted(before + missed + [later])  # each once: the overlap was a duplicate
    assert old not in stored
    assert await bed.cursor() > stale_cursor
    # The resync's listing started an hour before the newest stored message's date.
    query = fake_google.calls_to("GET", r"/messages$")[0][2]["q"][0]
    assert query == f"after:{(now_ms - 2 * day + 1) // 1000 - 3600}"


async def test_walkers_racing_on_one_mailbox_never_move_the_cursor_backwards(bed, fake_google):
    """Two daemons (two walkers, one cursor table): the slower one finishing last must not undo the faster one."""
    account = bed.accounts["support-gmail"]
    await bed.set_cursor(fake_google.mailbox(MAILBOX).history_id)
    early = [fake_google.add_message(MAILBOX) for _ in range(3)]
    slow = HistoryWalker(bed.cursors, bed.queue, bed.walker.dates)
    fast = HistoryWalker(bed.cursors, bed.queue, bed.walker.dates)
    reached_history, release = trio.Event(), trio.Event()

    class Stalled:
        async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
            reached_history.set()
            await release.wait()  # the slow daemon pauses between reading history and storing its cursor
            return await bed.queue.enqueue_many(jobs)

    slow.queue = Stalled()
    slow_target = fake_google.mailbox(MAILBOX).history_id
    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow.on_push, account, slow_target)
        await reached_history.wait()
        late = [fake_google.add_message(MAILBOX) for _ in range(2)]
        assert await fast.on_push(account, fake_google.mailbox(MAILBOX).history_id) == "walked"
        fast_cursor = await bed.cursor()
        assert fast_cursor == fake_google.mailbox(MAILBOX).history_id > slow_target
        release.set()
    assert await bed.cursor() == fast_cursor  # the slow walker's older cursor was refused
    queued = [job.pointer.message_id for job in bed.message_jobs()]
    assert set(queued) == set(early + late)  # the overlap is queued twice; the ledger stores once
    await bed.process_all()
    assert sorted(message_id for message_id, _ in bed.stored()) == sorted(early + late)


async def test_a_mailbox_without_a_cursor_starts_now(bed, fake_google):
    fake_google.add_message(MAILBOX, subject="Old mail")
    outcome = await bed.processor.handle(bed.push_job(fake_google.mailbox(MAILBOX).history_id))
    assert outcome.status == "processed"
    assert bed.message_jobs() == []
    assert await bed.cursor() == fake_google.mailbox(MAILBOX).history_id
    new = fake_google.add_message(MAILBOX, subject="New mail")
    await bed.processor.handle(bed.push_job(fake_google.mailbox(MAILBOX).history_id))
    assert [job.pointer.message_id for job in bed.message_jobs()] == [new]


async def test_a_push_for_a_paused_account_waits_without_calling_google(bed, fake_google):
    account = bed.accounts["support-gmail"]
    await bed.set_cursor(fake_google.mailbox(MAILBOX).history_id)
    fake_google.add_message(MAILBOX)
    fake_google.refresh_tokens.clear()  # the user revoked inboundd's access
    with pytest.raises(TransientError, match="refused its credentials"):
        await bed.processor.handle(bed.push_job(fake_google.mailbox(MAILBOX).history_id))
    assert account.auth.error == "invalid_grant"
    calls = len(fake_google.calls)
    with pytest.raises(TransientError, match="paused"):
        await bed.processor.handle(bed.push_job(fake_google.mailbox(MAILBOX).history_id))
    assert len(fake_google.calls) == calls and bed.message_jobs() == []
