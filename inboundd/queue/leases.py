"""Claims and leases: XREADGROUP claims (the PEL entry is the lease) and the fenced lease operations.

Ack, retry, dead-letter, requeue and heartbeat each run one fenced script
(:mod:`inboundd.queue.scripts`): a consumer that lost its lease gets a logged
no-op, never a second copy of the job.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Sequence

import msgspec
import redis

from .. import clock, jobs as jobs_mod, log, metrics
from ..jobs import Job
from .base import GROUP, PAGE, Claimed, QueueBase, decode_entry, decode_payload, text

__all__ = ["MAX_ERROR_CHARS", "Leases"]

_log = log.get_logger("queue")

#: Longest last-error text kept in a dead-letter entry.
MAX_ERROR_CHARS = 2000


class Leases(QueueBase):
    """The consumer side of the queue: claim, ack, retry, dead-letter, heartbeat, recover, hand back."""

    def _claim_sync(self, client: redis.Redis, consumer: str, count: int, block_ms: int | None,
                    start: str) -> list[Claimed]:
        try:
            reply = client.xreadgroup(GROUP, consumer, {self.keys.stream: start}, count=count, block=block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The stream or group vanished (FLUSHALL, a new Redis): recreate and read again.
            self._ensure_group_sync(client)
            reply = client.xreadgroup(GROUP, consumer, {self.keys.stream: start}, count=count, block=block_ms)
        out: list[Claimed] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                out.append(decode_entry(entry_id, fields))
        return out

    async def claim(self, consumer: str, count: int, *, block: float | None = None) -> list[Claimed]:
        """Claim up to *count* new entries for *consumer*, waiting at most *block* seconds (≤ 1 s).

        The wait is also kept to half of ``redis.socket_timeout``: a blocking
        read that the socket's timeout cut off would fail every time.
        Cancellation waits for the ``XREADGROUP`` to return (within *block*) and
        then delivers the entries anyway; the caller owns whatever it returns.
        """
        block = self.cfg.block if block is None else block
        socket_timeout = getattr(self.rio, "socket_timeout", None)
        if socket_timeout:
            block = min(block, socket_timeout / 2)
        block_ms = max(1, int(block * 1000)) if block > 0 else None
        return await self.rio.run(self._claim_sync, consumer, count, block_ms, ">")

    def _ack_claim_sync(self, client: redis.Redis, consumer: str, ack_ids: list[str],
                        count: int) -> tuple[list[int], list[Claimed]]:
        args = [GROUP, consumer, count, *ack_ids]
        try:
            flags, flat = self.scripts.ack_claim(keys=[self.keys.stream], args=args, client=client)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The stream or group vanished (FLUSHALL, a new Redis): recreate and go again.
            self._ensure_group_sync(client)
            flags, flat = self.scripts.ack_claim(keys=[self.keys.stream], args=args, client=client)
        return flags, [decode_payload(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]

    async def ack_and_claim(self, consumer: str, acks: Sequence[Claimed],
                            count: int) -> tuple[list[bool], list[Claimed]]:
        """Ack *acks* (as :meth:`ack`) and claim up to *count* new entries, in one Redis call, without waiting.

        Returns one bool per ack (False: the lease had moved, logged as
        stale) and the claimed entries, which may be none: then wait for
        work with :meth:`claim`. Cancellation waits for the call to return;
        the caller owns whatever was claimed.
        """
        flags, claimed = await self.rio.run(self._ack_claim_sync, consumer, [c.entry_id for c in acks], count)
        result = [bool(flag) for flag in flags]
        if not all(result):
            for entry, ok in zip(acks, result):
                if not ok:
                    self._stale("ack", consumer, entry.entry_id, entry.job)
        return result, claimed

    async def own_pending(self, consumer: str, count: int = PAGE) -> list[Claimed]:
        """Entries already pending for *consumer* (``XREADGROUP … 0``), oldest first, up to *count*."""
        return await self.rio.run(self._claim_sync, consumer, count, None, "0")

    # ------------------------------------------------------------------ fenced lease operations

    def _stale(self, operation: str, consumer: str, entry_id: str, job: Job | None) -> None:
        metrics.stale_owner.labels(operation).inc()
        fields = job.log_fields() if job is not None else {}
        log.event(_log, "job.stale_owner", level=logging.WARNING, operation=operation, consumer=consumer,
                  entry_id=entry_id, **fields)

    async def ack(self, consumer: str, entries: Sequence[Claimed]) -> list[bool]:
        """Ack and delete *entries* if still pending for *consumer*; one bool per entry."""
        if not entries:
            return []
        ids = [c.entry_id for c in entries]
        flags = await self.rio.run(
            lambda client: self.scripts.ack(keys=[self.keys.stream], args=[GROUP, consumer, *ids], client=client))
        result = []
        for claimed, flag in zip(entries, flags):
            ok = bool(flag)
            result.append(ok)
            if not ok:
                self._stale("ack", consumer, claimed.entry_id, claimed.job)
        return result

    async def retry(self, consumer: str, claimed: Claimed, job: Job, delay: float, *, kind: str) -> bool:
        """Atomically schedule *job* (the updated job) after *delay* seconds and ack the entry.

        Returns False (a logged no-op) if the entry is no longer pending for *consumer*.
        """
        due_ms = clock.wall_ms() + max(0, int(math.ceil(delay * 1000)))
        ok = bool(await self.rio.run(lambda client: self.scripts.retry(
            keys=[self.keys.stream, self.keys.delayed],
            args=[GROUP, consumer, claimed.entry_id, due_ms, jobs_mod.encode(job)], client=client)))
        if not ok:
            self._stale("retry", consumer, claimed.entry_id, job)
            return False
        if due_ms / 1000 < self._promote_at:
            self._promote_wake.set()   # due before the promoter wakes: it wakes sooner (ReclaimTimer)
        metrics.jobs_retried.labels(job.provider, job.account, kind).inc()
        log.event(_log, "job.retry", kind=kind, delay=round(delay, 3), transient=job.transient,
                  consumer=consumer, **job.log_fields())
        return True

    async def dead_letter(self, consumer: str, claimed: Claimed, *, reason: str, error: str,
                          attempts: int) -> bool:
        """Atomically move the entry to the DLQ with *reason*, the last *error* and *attempts*.

        The raw payload is kept as it was (even when it could not be decoded).
        Returns False (a logged no-op) if the entry is no longer pending for *consumer*.
        """
        job = claimed.job
        fields: list[Any] = [
            "job", claimed.raw, "reason", reason, "error", error[:MAX_ERROR_CHARS], "attempts", attempts,
            "at", f"{clock.wall_ms() / 1000:.3f}", "job_id", job.id if job else "", "account", job.account if job else "",
            "provider", job.provider if job else "", "entry_id", claimed.entry_id, "consumer", consumer,
        ]
        reply = await self.rio.run(lambda client: self.scripts.dead_letter(
            keys=[self.keys.stream, self.keys.dlq],
            args=[GROUP, consumer, claimed.entry_id, self.cfg.dlq_maxlen, *fields], client=client))
        if reply is None:
            self._stale("dead_letter", consumer, claimed.entry_id, job)
            return False
        job_fields = job.log_fields() if job else {"job_id": "", "account": "", "provider": "", "attempt": attempts}
        metrics.jobs_dead_lettered.labels(job_fields["provider"], job_fields["account"], reason).inc()
        log.event(_log, "job.dead_letter", level=logging.WARNING, reason=reason, error=error[:200],
                  attempts=attempts, dlq_id=text(reply[0]), consumer=consumer, **job_fields)
        for evicted in reply[1:]:
            metrics.dlq_evicted.inc()
            log.event(_log, "dlq.evicted", level=logging.WARNING, dlq_id=text(evicted[0]), job_id=text(evicted[1]),
                      account=text(evicted[2]), reason=text(evicted[3]), dlq_maxlen=self.cfg.dlq_maxlen)
        return True

    async def heartbeat(self, consumer: str, entry_ids: Sequence[str]) -> list[str]:
        """Extend the lease of *entry_ids* still pending for *consumer*; returns the ids it lost."""
        if not entry_ids:
            return []
        ids = list(entry_ids)
        flags = await self.rio.run(lambda client: self.scripts.heartbeat(
            keys=[self.keys.stream], args=[GROUP, consumer, *ids], client=client))
        return [i for i, flag in zip(ids, flags) if not flag]

    async def recover(self, consumer: str, entries: Iterable[Claimed], *, why: str, count_attempt: bool = True) -> int:
        """Deal with entries whose worker was lost (reclaimed, or left pending by a dead process).

        Each counts one attempt: requeued at the tail with ``attempt + 1``, or
        dead-lettered with ``worker_lost`` once that reaches ``max_attempts``.
        With *count_attempt* false (entries no worker ever received) they are
        requeued as they are. Undecodable entries are dead-lettered as
        ``invalid_payload``. Entries must be pending for *consumer*. Returns
        how many were requeued.
        """
        requeued = 0
        for claimed in entries:
            if not claimed.raw and claimed.job is None:
                # The entry itself was deleted (nothing to process): drop the lease.
                await self.ack(consumer, [claimed])
                continue
            if claimed.job is None:
                await self.dead_letter(consumer, claimed, reason="invalid_payload", error=claimed.error or "",
                                       attempts=0)
                continue
            job = msgspec.structs.replace(claimed.job, attempt=claimed.job.attempt + 1) if count_attempt else claimed.job
            if count_attempt and job.attempt >= self.cfg.max_attempts:
                await self.dead_letter(consumer, claimed, reason="worker_lost",
                                       error=f"worker lost while holding the job ({why})", attempts=job.attempt)
                continue
            new_id = await self._requeue(consumer, claimed, job)
            if new_id is None:
                continue
            requeued += 1
            metrics.jobs_reclaimed.inc()
            log.event(_log, "job.reclaim", level=logging.WARNING, why=why, entry_id=claimed.entry_id,
                      new_entry_id=new_id, consumer=consumer, **job.log_fields())
        return requeued

    async def hand_back(self, consumer: str, entries: Iterable[Claimed]) -> int:
        """Return claimed entries this consumer will not start (drain, stop) to the stream at once.

        Unlike :meth:`recover` no attempt is counted: the job never ran. Other
        consumers (or this daemon after a restart) take them without waiting
        for the lease. Undecodable entries stay pending for the reclaimer to
        dead-letter. Returns how many went back.
        """
        returned = 0
        for claimed in entries:
            if claimed.job is None:
                continue
            new_id = await self._requeue(consumer, claimed, claimed.job)
            if new_id is not None:
                returned += 1
                log.event(_log, "job.hand_back", entry_id=claimed.entry_id, new_entry_id=new_id,
                          consumer=consumer, **claimed.job.log_fields())
        return returned

    async def _requeue(self, consumer: str, claimed: Claimed, job: Job) -> str | None:
        """Atomically re-add *job* at the tail and drop *claimed* (fenced); None if the lease moved."""
        new_id = await self.rio.run(lambda client: self.scripts.requeue(
            keys=[self.keys.stream], args=[GROUP, consumer, claimed.entry_id, jobs_mod.encode(job)],
            client=client))
        if new_id is None:
            self._stale("requeue", consumer, claimed.entry_id, job)
            return None
        return text(new_id)

