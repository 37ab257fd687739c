"""The durable pointer queue on Redis Streams, and its reclaim timer.

Keys (all share the hash tag ``{prefix}``, so every multi-key script runs on
Redis Cluster): ``{prefix}:stream`` holds ready and in-flight jobs and is owned
by the consumer group ``inboundd``; ``{prefix}:delayed`` is a sorted set of jobs
waiting for their retry (score = due time in wall-clock ms, member = encoded
job); ``{prefix}:dlq`` is the dead-letter stream.

* **Enqueue** returns only once Redis acknowledged the ``XADD``. Concurrent
  enqueues are coalesced by :meth:`Queue.run` into pipelined batches; every
  caller still gets its own result or exception (:mod:`.batcher`).
* **Claim** is ``XREADGROUP`` (the PEL entry is the lease); **ack**, **retry**,
  **dead-letter** and **requeue** are fenced Lua scripts
  (:mod:`.scripts`, Lua in ``lua/``): a consumer that lost its lease gets a
  logged no-op (:mod:`.leases`).
* **Attempts** live in the job (``job.attempt``): a job error, and a worker
  lost while holding the job, each count one. The reclaim timer puts a lost
  job back at the tail with its attempt counted, or dead-letters it with
  ``worker_lost`` once it reached ``max_attempts``, so a poison pill that
  kills its worker ends in the DLQ instead of looping (:mod:`.timers`).

The operations API (:meth:`Queue.stats`, :meth:`Queue.dead_letters`,
:meth:`Queue.redrive`, :mod:`.operations`) needs only a
:class:`~inboundd.redisio.RedisIO`, so ``inboundctl`` can use it while the
daemon is stopped.
"""

from __future__ import annotations

from .base import GROUP, Claimed, Keys
from .batcher import Enqueuing, QueueStopped
from .operations import DeadLetter, Operations, QueueStats
from .timers import ReclaimTimer, Timers

__all__ = [
    "GROUP",
    "Claimed",
    "DeadLetter",
    "Keys",
    "Queue",
    "QueueStats",
    "QueueStopped",
    "ReclaimTimer",
]


class Queue(Enqueuing, Timers, Operations):
    """The pointer queue. Construct once per daemon; see the package docstring."""
