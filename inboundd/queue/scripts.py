"""The one loader of inboundd's Redis Lua scripts, and the queue's script set.

The Lua lives in ``lua/*.lua`` beside this module, one script per file, each
headed by a comment naming its ``KEYS`` and ``ARGV``. Every multi-step queue
operation is one script, so it is atomic, and every key it touches is passed
in ``KEYS`` (all share the ``{prefix}`` hash tag), so it runs on Redis Cluster
too. Scripts that end a lease (ack, retry, dead-letter, requeue, heartbeat)
are *fenced*: they start with the ``owned`` prelude and act on an entry only
if it is still pending for the calling consumer (``XPENDING … id id 1
consumer``); otherwise they do nothing and report it, so a consumer whose
lease was reclaimed cannot ack, requeue or duplicate anything.

Works on Redis ≥ 6.2 (XPENDING with a consumer filter, exclusive ranges,
XAUTOCLAIM); no XACKDEL (8.2+) is assumed.
"""

from __future__ import annotations

import functools
from importlib import resources

import redis
from redis.commands.core import Script

__all__ = ["Scripts", "register", "source"]

@functools.cache
def _read(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def source(name: str, *, preludes: tuple[str, ...] = ()) -> str:
    """The Lua text of script *name* (``lua/NAME.lua``) after its *preludes*, read once per process.

    Raises ``FileNotFoundError`` naming the file when there is no such script.
    """
    return "".join(_read(part) for part in (*preludes, name))


def register(client: redis.Redis, name: str, *, preludes: tuple[str, ...] = ()) -> Script:
    """Script *name* registered on *client*: called by EVALSHA, falling back to EVAL once."""
    return client.register_script(source(name, preludes=preludes))


class Scripts:
    """The queue's scripts registered on one client."""

    def __init__(self, client: redis.Redis) -> None:
        def fenced(name: str) -> Script:
            return register(client, name, preludes=("owned",))

        def acking(name: str) -> Script:
            return register(client, name, preludes=("owned", "ack_each"))

        self.ack = acking("ack")
        self.retry = fenced("retry")
        self.dead_letter = fenced("dead_letter")
        self.requeue = fenced("requeue")
        self.heartbeat = fenced("heartbeat")
        self.enqueue = register(client, "enqueue")
        self.ack_claim = acking("ack_claim")
        self.promote = register(client, "promote")
        self.redrive = register(client, "redrive")
        self.forget_consumer = register(client, "forget_consumer")
