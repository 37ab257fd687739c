"""``inboundctl trace`` and ``inboundctl messages``: what happened to this email, against real Redis and PostgreSQL.

Every state a message can be in is made through the real code: the real
``Processor`` stores, deduplicates and records failures in PostgreSQL (the
provider is the in-process ``FakeSource`` of tests/fakes.py), the real
``Queue`` claims, retries and dead-letters in Redis. The commands run
in-process through ``cli.main``, as from a shell.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from inboundd import cli, trace
from inboundd.config import PostgresConfig, QueueConfig, RedisConfig
from inboundd.jobs import Job
from inboundd.queue import Queue
from inboundd.redisio import RedisIO
from inboundd.source import SourceUnavailable
from inboundd.store.db import Database
from inboundd.store.migrate import migrate
from services import free_port
from fakes import ACCOUNT, TENANT, FakeSource, job_for, mime, processor

CONSUMER = "host-a:1234abcd-c1"


# --------------------------------------------------------------------------- what the operator typed


@pytest.mark.parametrize(("text", "by", "value"), [
    ("0F8E2C1B6A7D4E5F9A0B1C2D3E4F5A6B", "job_id", "0f8e2c1b6a7d4e5f9a0b1c2d3e4f5a6b"),
    ("imap:INBOX:7:42", "identity", "imap:INBOX:7:42"),
    ("imap:Sales/2024:1:9", "identity", "imap:Sales/2024:1:9"),
    ("graph:AAMkAGI2", "identity", "graph:AAMkAGI2"),
    ("gmail:18c2f0a", "identity", "gmail:18c2f0a"),
    ("<CAFx1=abc@mail.example.com>", "message_id", "CAFx1=abc@mail.example.com"),
    (" abc.def@example.org ", "message_id", "abc.def@example.org"),
])
def test_what_the_operator_typed_is_recognised(text: str, by: str, value: str) -> None:
    assert trace.classify_query(text) == (by, value)


@pytest.mark.parametrize("text", ["", "hello", "0f8e2c", "pop3:INBOX:1", "<no at sign>", "a b@c"])
def test_anything_else_is_refused_saying_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="job id .* identity .* Message-ID"):
        trace.classify_query(text)


# --------------------------------------------------------------------------- the outcome line (pure)

NOW = 1_800_000_000.0


def _job(state: str, **extra: Any) -> dict[str, Any]:
    return {"state": state, "job_id": "j1", "job": {"attempt": 2}, **extra}


@pytest.mark.parametrize(("ledger", "jobs", "expected"), [
    ({"status": "processed", "message_id": 12}, [], "stored as inbound_messages.id 12"),
    ({"status": "duplicate", "reason": "message_id", "message_id": 12}, [],
     "duplicate (message_id) of inbound_messages.id 12: not stored again"),
    ({"status": "skipped", "reason": "oversize"}, [], "skipped: oversize"),
    ({"status": "failed", "attempts": 2, "reason": None, "last_error": "ParseError: bad"},
     [_job("delayed", due_at=NOW + 300)],
     "failed attempt 2: ParseError: bad; next: delayed until 2027-01-15T08:05:00Z (in 5m), attempt 2"),
    ({"status": "failed", "attempts": 8, "reason": None, "last_error": "boom"},
     [_job("dead", reason="max_attempts", attempts=8, since=NOW)],
     "dead-lettered (max_attempts): `inboundctl redrive j1` after fixing the cause"),
    (None, [_job("in_flight", holder="c1", lease_remaining=-20.0, deliveries=3)],
     "not processed yet: in flight, held by c1, lease expired 20s ago (the reclaim timer takes it back), "
     "delivered 3 time(s), attempt 2"),
    (None, [_job("ready", since=NOW - 90)], "not processed yet: ready since 2027-01-15T07:58:30Z (90s), attempt 2"),
    (None, [], "unknown to the ledger and the queue"),
])
def test_one_line_says_what_happened(ledger: Any, jobs: list[dict[str, Any]], expected: str) -> None:
    assert trace.outcome({"ledger": ledger, "jobs": jobs}, NOW) == expected


# --------------------------------------------------------------------------- against the real services


def write_config(directory: Path, redis_url: str, pg_dsn: str) -> Path:
    (directory / "support.pw").write_text("secret\n")
    path = directory / "inboundd.toml"
    path.write_text(
        f'[redis]\nurl = "{redis_url}"\nsocket_timeout = "2s"\n'
        f'[postgres]\ndsn = "{pg_dsn}"\nconnect_timeout = "2s"\n'
        f'[control]\nsocket = "{directory / "control.sock"}"\n'
        f'[[imap]]\nid = "{ACCOUNT}"\ntenant = "{TENANT}"\nhost = "imap.example.com"\nusername = "u"\n'
        'password_file = "support.pw"\n'
        f'[[imap]]\nid = "sales"\ntenant = "{TENANT}"\nhost = "imap.example.com"\nusername = "s"\n'
        'password_file = "support.pw"\n'
    )
    return path


class World:
    """One message in every state the ledger and the queue know, made by the real code."""

    processed: Job
    duplicate: Job
    in_flight: Job
    failed_then_delayed: Job
    dead: Job
    ready: Job
    stored_id: int


@pytest.fixture
def world(redis_url: str, pg_dsn: str) -> World:
    made = World()

    async def build() -> None:
        db = Database(PostgresConfig(dsn=pg_dsn, pool_min=1, pool_max=4))
        rio = RedisIO.from_config(RedisConfig(url=redis_url))
        await db.open()
        try:
            await db.run(migrate)
            source = FakeSource()
            handler = processor(db, source)
            made.processed, made.duplicate = job_for(1), job_for(2)
            source.put(made.processed, mime(1))
            source.put(made.duplicate, mime(2, message_id="<msg-1@example.com>"))
            made.stored_id = (await handler.handle(made.processed)).message_row_id
            assert (await handler.handle(made.duplicate)).status == "duplicate"
            made.failed_then_delayed = job_for(4)
            source.put(made.failed_then_delayed, RuntimeError("IMAP server said: BAD [SERVERBUG]"))
            with pytest.raises(RuntimeError):
                await handler.handle(made.failed_then_delayed)

            queue = Queue(rio, QueueConfig(), prefix="inboundd")
            await queue.ensure_group()
            made.in_flight, made.dead, made.ready = job_for(3), job_for(5), job_for(6)
            await queue.enqueue_many([made.in_flight, made.failed_then_delayed, made.dead])
            claimed = {c.job.id: c for c in await queue.claim(CONSUMER, 3, block=0)}
            delayed = claimed[made.failed_then_delayed.id]
            assert await queue.retry(CONSUMER, delayed, delayed.job, 600, kind="error")
            assert await queue.dead_letter(CONSUMER, claimed[made.dead.id], reason="max_attempts",
                                           error="ParseError: no body\nsecond line", attempts=8)
            await queue.enqueue(made.ready)
        finally:
            await rio.close()
            await db.close()

    trio.run(build)
    return made


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def trace_json(capsys: pytest.CaptureFixture[str], config: Path, what: str, *extra: str) -> dict[str, Any]:
    code, out, err = run(capsys, "-c", str(config), "trace", "--json", what, *extra)
    assert code == cli.EXIT_OK, err
    return json.loads(out)


def test_a_stored_message_by_its_job_id(capsys, tmp_path: Path, redis_url: str, pg_dsn: str, world: World) -> None:
    config = write_config(tmp_path, redis_url, pg_dsn)
    code, out, err = run(capsys, "-c", str(config), "trace", world.processed.id)
    assert code == cli.EXIT_OK, err
    lines = out.splitlines()
    assert lines[0] == f"TRACE job id {world.processed.id}"
    assert lines[2] == f"imap:INBOX:7:1  account {ACCOUNT}  tenant {TENANT}  provider imap"
    assert lines[3] == f"  outcome  stored as inbound_messages.id {world.stored_id}"
    assert lines[4] == f"  ledger   processed, attempts 1, job {world.processed.id}"
    assert lines[6].startswith(f"  stored   id {world.stored_id}, received 20") and \
        lines[6].endswith(", from Customer 1 <c1@example.com>, subject 'order 1'")
    assert lines[7] == "  queue    no job queued"
    assert len(lines) <= 24  # one screen


def test_a_message_id_finds_the_stored_message_and_its_duplicate(capsys, tmp_path: Path, redis_url: str,
                                                                  pg_dsn: str, world: World) -> None:
    config = write_config(tmp_path, redis_url, pg_dsn)
    doc = trace_json(capsys, config, "<msg-1@example.com>")
    assert doc["query"] == {"by": "message_id", "value": "msg-1@example.com"} and doc["errors"] == {}
    by_identity = {item["identity"]: item for item in doc["messages"]}
    assert set(by_identity) == {"imap:INBOX:7:1", "imap:INBOX:7:2"}
    original, duplicate = by_identity["imap:INBOX:7:1"], by_identity["imap:INBOX:7:2"]
    assert original["ledger"]["status"] == "processed" and original["stored"]["id"] == world.stored_id
    assert duplicate["ledger"]["status"] == "duplicate" and duplicate["stored"] is None
    assert duplicate["original"]["id"] == world.stored_id
    assert duplicate["outcome"] == f"duplicate (message_id) of inbound_messages.id {world.stored_id}: not stored again"
    # Another account's messages are not searched when one is named.
    code, out, _ = run(capsys, "-c", str(config), "trace", "msg-1@example.com", "--account", "sales")
    assert code == cli.EXIT_FAILED and "nothing found" in out


def test_a_job_in_flight_names_its_holder_and_lease(capsys, tmp_path: Path, redis_url: str, pg_dsn: str,
                                                    world: World) -> None:
    config = write_config(tmp_path, redis_url, pg_dsn)
    doc = trace_json(capsys, config, "imap:INBOX:7:3")
    [item] = doc["messages"]
    assert item["ledger"] is None and item["stored"] is None
    [place] = item["jobs"]
    assert (place["state"], place["holder"], place["deliveries"], place["job_id"]) == (
        "in_flight", CONSUMER, 1, world.in_flight.id)
    assert 25 < place["lease_remaining"] <= 30              # queue.lease is 30s, claimed just now
    assert item["outcome"].startswith(f"not processed yet: in flight, held by {CONSUMER}, lease expires in ")


def test_a_failed_attempt_waiting_for_its_retry(capsys, tmp_path: Path, redis_url: str, pg_dsn: str,
                                                world: World) -> None:
    config = write_config(tmp_path, redis_url, pg_dsn)
    code, out, err = run(capsys, "-c", str(config), "trace", world.failed_then_delayed.id)
    assert code == cli.EXIT_OK, err
    assert "  outcome  failed attempt 1: RuntimeError: IMAP server said: BAD [SERVERBUG]; next: delayed until " in out
    assert "  ledger   failed, attempts 1, job " in out
    assert "last error: RuntimeError: IMAP server said: BAD [SERVERBUG]" in out
    doc = trace_json(capsys, config, world.failed_then_delayed.id)
    [place] = doc["messages"][0]["jobs"]
    assert place["state"] == "delayed" and place["due_at"] > place["job"]["enqueued_at"] + 590


def test_a_dead_letter_says_why_and_how_to_redrive(capsys, tmp_path: Path, redis_url: str, pg_dsn: str,
                                                   world: World) -> None:
    config = write_config(tmp_path, redis_url, pg_dsn)
    code, out, _ = run(capsys, "-c", str(config), "trace", world.dead.id)
    assert code == cli.EXIT_OK
    assert f"  outcome  dead-lettered (max_attempts): `inboundctl redrive {world.dead.id}` after fixing the cause" in out
    assert ": max_attempts after 8 attempt(s): ParseError: no body second line" in out


def test_a_ready_job_and_nothing_at_all(capsys, tmp_path: Path, redis_url: str, pg_dsn: str, world: World) -> None:
    config = write_config(tmp_path, redis_url, pg_dsn)
    [item] = trace_json(capsys, config, f"imap:INBOX:7:6")["messages"]
    assert [place["state"] for place in item["jobs"]] == ["ready"]
    assert item["outcome"].startswith("not processed yet: ready since ")
    code, out, _ = run(capsys, "-c", str(config), "trace", "imap:INBOX:7:99")
    assert code == cli.EXIT_FAILED and out == "TRACE identity imap:INBOX:7:99\n  nothing found in the ledger, the " \
                                              "store or the queue\n"
    code, _, err = run(capsys, "-c", str(config), "trace", "what?")
    assert code == cli.EXIT_USAGE and "is not a job id" in err


def test_redis_down_still_shows_the_store_and_names_redis(capsys, tmp_path: Path, redis_url: str, pg_dsn: str,
                                                          world: World) -> None:
    config = write_config(tmp_path, f"redis://127.0.0.1:{free_port()}/0", pg_dsn)
    code, out, _ = run(capsys, "-c", str(config), "trace", world.processed.id)
    assert code == cli.EXIT_UNAVAILABLE
    assert f"stored as inbound_messages.id {world.stored_id}" in out
    assert "! redis: Redis at redis://127.0.0.1:" in out and "unreachable" in out


# --------------------------------------------------------------------------- inboundctl messages


def test_messages_lists_what_an_account_stored(capsys, tmp_path: Path, redis_url: str, pg_dsn: str,
                                               world: World) -> None:
    config = write_config(tmp_path, redis_url, pg_dsn)
    code, out, err = run(capsys, "-c", str(config), "messages", "--account", ACCOUNT, "--since", "1h")
    assert code == cli.EXIT_OK, err
    header, row, footer = out.splitlines()
    assert header.split() == ["ID", "RECEIVED", "FROM", "SUBJECT", "FLAGS"]
    assert row.split()[:2] == [str(world.stored_id), row.split()[1]] and row.split()[1].startswith("20")
    assert "Customer 1 <c1@example.com>  order 1" in row
    assert row.endswith("-")
    assert footer == f"1 message(s) stored by {ACCOUNT} in the last 1h"
    code, out, _ = run(capsys, "-c", str(config), "messages", "--account", ACCOUNT, "--json")
    [stored] = json.loads(out)
    assert (stored["id"], stored["identity"], stored["subject"], stored["attachments"]) == (
        world.stored_id, "imap:INBOX:7:1", "order 1", 0)
    code, out, _ = run(capsys, "-c", str(config), "messages", "--account", "sales")
    assert code == cli.EXIT_OK and out == "no message stored by sales in the last 1h\n"


def test_messages_of_an_unknown_account_or_a_bad_window(capsys, tmp_path: Path, redis_url: str,
                                                        pg_dsn: str) -> None:
    config = write_config(tmp_path, redis_url, pg_dsn)
    code, _, err = run(capsys, "-c", str(config), "messages", "--account", "nobody")
    assert code == cli.EXIT_USAGE and "no account 'nobody' is configured (accounts: sales, support)" in err
    code, _, err = run(capsys, "-c", str(config), "messages", "--account", ACCOUNT, "--since", "yesterday")
    assert code == cli.EXIT_USAGE and err.startswith("inboundctl: --since: expected a duration")
