"""Parsing off the event loop: worker processes give the library's result, a cancel does not wait for a parse."""

from __future__ import annotations

import pathlib

import trio

from inboundd.mime import parse_message
from inboundd.parsing import ProcessParser, ThreadParser, decode_message, encode_message, usable_cores

CORPUS = pathlib.Path(__file__).parent / "corpus"


def slow_message(lines: int) -> bytes:
    """A message whose parse takes about 0.3 µs per line of its attachment (the parser works line by line)."""
    return (b"From: a@example.com\r\nSubject: lines\r\nMessage-ID: <l@example.com>\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n'
            b'--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="x.txt"'
            b"\r\n\r\n" + b"x\r\n" * lines + b"--b--\r\n")


def test_every_corpus_result_survives_the_trip_back_from_a_worker() -> None:
    for path in sorted(CORPUS.glob("*.eml")):
        message = parse_message(path.read_bytes())
        assert decode_message(encode_message(message)) == message, path.name


def test_the_pool_follows_the_usable_cores() -> None:
    assert usable_cores() >= 1


async def test_worker_processes_and_threads_parse_like_the_library() -> None:
    samples = [p.read_bytes() for p in sorted(CORPUS.glob("*.eml"))[:6]] + [b"\x00\xffnot mail at all"]
    async with ProcessParser.open(workers=2) as processes:
        assert processes.workers == 2
        in_processes = [await processes.parse(raw) for raw in samples]
        in_process_runs = await processes.parse_many(samples)
    in_threads = [await ThreadParser().parse(raw) for raw in samples]
    in_thread_runs = await ThreadParser(3).parse_many(samples)
    expected = [parse_message(raw) for raw in samples]
    assert in_processes == in_process_runs == in_threads == in_thread_runs == expected
    assert await ThreadParser().parse_many([]) == []


async def test_a_cancelled_parse_returns_at_once_and_the_pool_keeps_working() -> None:
    raw = slow_message(12_000_000)  # ~4 s of parsing on an idle machine, 20 times the 0.2 s before the cancel
    async with ProcessParser.open(workers=1) as parser:
        await parser.parse(b"Subject: warm\r\n\r\nx")  # the worker is up
        started = trio.current_time()
        with trio.move_on_after(0.2) as scope:
            await parser.parse(raw)
        assert scope.cancelled_caught
        assert trio.current_time() - started < 1.5  # the worker was killed, not waited for
        assert (await parser.parse(b"Subject: after\r\n\r\nbody")).subject == "after"
