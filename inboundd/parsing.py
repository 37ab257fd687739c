"""Parsing off the event loop: :func:`inboundd.mime.parse_message` in worker processes or a thread.

Parsing is pure Python and CPU-bound (~0.5–1 ms for a 10 KB message, more
with attachments). In a thread it still holds the daemon's one GIL, so the
event loop, the Redis and PostgreSQL threads and the parse take turns on one
core. :class:`ProcessParser` runs it in a pool of worker processes
(``trio-parallel``), one per usable core, and brings the result back as
msgpack (msgspec), which is compact and decodes straight into
:class:`~inboundd.mime.Message`. :class:`ThreadParser` keeps the parse in a
worker thread of this process (tests, tools, and where spawning processes is
not wanted).

Both give the same :class:`~inboundd.mime.Message` for the same bytes, and
neither raises on bad input (``parse_message`` never does).
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import AsyncIterator, Protocol, Sequence

import msgspec
import trio
import trio_parallel

from .mime import Message, parse_message

__all__ = ["Parser", "ProcessParser", "ThreadParser", "decode_message", "encode_message", "parse_encoded",
           "parse_many_encoded", "usable_cores"]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)
_many_decoder = msgspec.msgpack.Decoder(list[Message])

#: Worker processes idle this long exit (a new one starts with the next parse).
WORKER_IDLE_TIMEOUT = 600.0


def encode_message(message: Message) -> bytes:
    """*message* as msgpack: what a worker process sends back."""
    return _encoder.encode(message)


def decode_message(data: bytes) -> Message:
    """The :class:`Message` :func:`encode_message` encoded."""
    return _decoder.decode(data)


def parse_encoded(raw: bytes) -> bytes:
    """Parse *raw* and return the result encoded (runs in a worker process; never raises on bad input)."""
    return _encoder.encode(parse_message(raw))


def parse_many_encoded(raws: Sequence[bytes]) -> bytes:
    """Parse each of *raws* and return the list of results encoded (runs in a worker process)."""
    return _encoder.encode([parse_message(raw) for raw in raws])


def _chunks(items: Sequence[bytes], parts: int) -> list[list[bytes]]:
    """*items* in order, cut into at most *parts* runs of nearly equal length."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


class Parser(Protocol):
    async def parse(self, raw: bytes) -> Message:
        """The parsed message; cancellation is honoured (see the implementation)."""
        ...

    async def parse_many(self, raws: Sequence[bytes]) -> list[Message]:
        """The parsed messages, in order (a batch's worth in a few hand-overs, not one each)."""
        ...


class ThreadParser:
    """Parse in a worker thread of this process, at most *threads* at once."""

    def __init__(self, threads: int = 2) -> None:
        self.limiter = trio.CapacityLimiter(threads)

    async def parse(self, raw: bytes) -> Message:
        """Parse *raw* in a thread; a cancel waits for the parse (it is bounded by the message size)."""
        return await trio.to_thread.run_sync(parse_message, raw, limiter=self.limiter)

    async def parse_many(self, raws: Sequence[bytes]) -> list[Message]:
        """Parse *raws* in a few threads, one run of messages each; a cancel waits for the runs."""
        runs = _chunks(raws, int(self.limiter.total_tokens))
        parsed: list[list[Message]] = [[] for _ in runs]

        async def run(index: int) -> None:
            parsed[index] = await trio.to_thread.run_sync(lambda: [parse_message(r) for r in runs[index]],
                                                          limiter=self.limiter)

        async with trio.open_nursery() as nursery:
            for index in range(len(runs)):
                nursery.start_soon(run, index)
        return [message for run_result in parsed for message in run_result]


class ProcessParser:
    """Parse in a pool of worker processes, one per usable core by default.

    Open it with :meth:`open` (an async context manager): the workers are
    stopped on every exit path.
    """

    def __init__(self, context: trio_parallel.WorkerContext, workers: int) -> None:
        self._context = context
        self.workers = workers
        self.limiter = trio.CapacityLimiter(workers)

    @classmethod
    @asynccontextmanager
    async def open(cls, workers: int | None = None) -> AsyncIterator["ProcessParser"]:
        """A pool of *workers* processes (default: :func:`usable_cores`), closed when the block ends."""
        count = workers if workers is not None else usable_cores()
        async with trio_parallel.open_worker_context(idle_timeout=WORKER_IDLE_TIMEOUT) as context:
            yield cls(context, count)

    async def parse(self, raw: bytes) -> Message:
        """Parse *raw* in a worker process.

        Cancellation kills the worker that is parsing (a new one takes its
        place), so a shutdown never waits for a parse.
        """
        data = await self._context.run_sync(parse_encoded, bytes(raw), limiter=self.limiter, kill_on_cancel=True)
        return _decoder.decode(data)

    async def parse_many(self, raws: Sequence[bytes]) -> list[Message]:
        """Parse *raws* in the workers, one run of messages per worker (one round trip each).

        Cancellation kills the workers that are parsing, as for :meth:`parse`.
        """
        runs = _chunks([bytes(raw) for raw in raws], self.workers)
        parsed: list[list[Message]] = [[] for _ in runs]

        async def run(index: int) -> None:
            data = await self._context.run_sync(parse_many_encoded, runs[index], limiter=self.limiter,
                                                kill_on_cancel=True)
            parsed[index] = _many_decoder.decode(data)

        async with trio.open_nursery() as nursery:
            for index in range(len(runs)):
                nursery.start_soon(run, index)
        return [message for run_result in parsed for message in run_result]
