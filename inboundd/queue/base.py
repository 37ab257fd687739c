"""What every part of the queue shares: its keys, the claimed-entry record, and the consumer group."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import redis
import trio

from .. import jobs as jobs_mod, log
from ..config_schema import QueueConfig
from ..jobs import Job, JobDecodeError
from ..redisio import RedisIO, failure_level, tagged_key
from .scripts import Scripts

__all__ = ["GROUP", "PAGE", "Claimed", "Keys", "QueueBase"]

_log = log.get_logger("queue")

#: The consumer group that owns the stream.
GROUP = "inboundd"
#: Entries handled per XAUTOCLAIM / promote / DLQ page.
PAGE = 200


class Keys(msgspec.Struct, frozen=True):
    """The queue's Redis keys for one prefix."""

    stream: str
    delayed: str
    dlq: str

    @classmethod
    def for_prefix(cls, prefix: str) -> "Keys":
        return cls(stream=tagged_key(prefix, "stream"), delayed=tagged_key(prefix, "delayed"),
                   dlq=tagged_key(prefix, "dlq"))

    def all(self) -> list[str]:
        return [self.stream, self.delayed, self.dlq]


class Claimed(msgspec.Struct):
    """One stream entry a consumer holds: the decoded job, or why it could not be decoded."""

    entry_id: str
    raw: bytes
    job: Job | None
    error: str | None = None


def text(value: Any) -> str:
    """A Redis reply value as ``str`` (bytes are UTF-8 decoded)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_entry(entry_id: Any, fields: Any) -> Claimed:
    """A stream entry as :class:`Claimed`; an entry without a decodable job carries the reason."""
    return decode_payload(entry_id, (fields or {}).get(b"job"))


def decode_payload(entry_id: Any, raw: bytes | None) -> Claimed:
    """Entry *entry_id* with job payload *raw* (None: the entry has no ``job`` field) as :class:`Claimed`."""
    eid = text(entry_id)
    if raw is None:
        return Claimed(eid, b"", None, "stream entry has no 'job' field")
    try:
        return Claimed(eid, raw, jobs_mod.decode(raw))
    except JobDecodeError as exc:
        return Claimed(eid, raw, None, str(exc))


class QueueBase:
    """The queue's state and its consumer group; the parts of :class:`~inboundd.queue.Queue` build on it."""

    def __init__(self, rio: RedisIO, cfg: QueueConfig, *, prefix: str = "inboundd") -> None:
        self.rio = rio
        self.cfg = cfg
        self.keys = Keys.for_prefix(prefix)
        self.scripts = Scripts(rio.client)
        self._group_ready = False
        #: Set when this process schedules a retry due before the promoter's planned wake-up (``_promote_at``).
        self._promote_wake = trio.Event()
        self._promote_at = math.inf

    def _ensure_group_sync(self, client: redis.Redis) -> None:
        try:
            client.xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def ensure_group(self) -> None:
        """Create the stream and its consumer group unless they exist (idempotent)."""
        await self.rio.run(self._ensure_group_sync)
        self._group_ready = True

    async def try_ensure_group(self) -> bool:
        """:meth:`ensure_group`, but a Redis that is down is logged, not raised.

        Starting without Redis is allowed: enqueues then fail (and the caller
        answers 503), and claims recreate the group once Redis is back.
        """
        try:
            await self.ensure_group()
            return True
        except (redis.RedisError, OSError) as exc:
            log.event(_log, "queue.redis_unavailable", level=failure_level(exc), error=str(exc))
            return False
