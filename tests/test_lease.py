"""The single-owner Redis lease with its fencing token (``inboundd.ingress.lease``), against a real Redis."""

from __future__ import annotations

import trio

from inboundd.config import RedisConfig
from inboundd.ingress.lease import Lease, lease_keys
from inboundd.redisio import RedisIO


def lease(rio, owner, ttl=1.0, account="acct", folder="INBOX"):
    return Lease(rio, lease_keys("t", "imap", account, folder), instance=owner, ttl=ttl)


async def test_lease_acquire_renew_release_and_fencing(redis_url):
    rio = RedisIO.from_config(RedisConfig(url=redis_url))
    try:
        a, b = lease(rio, "a", ttl=2.0), lease(rio, "b", ttl=2.0)
        assert await a.try_acquire() is None and a.token == 1
        held = await b.try_acquire()
        assert held is not None and 1.0 < held <= 2.0 and b.token is None
        assert await a.try_acquire() is None and a.token == 1     # re-acquire by the holder keeps the token
        assert await a.renew() and await a.still_owner()
        assert not await b.renew() and not await b.still_owner()
        await b.release()                                          # not the owner: no effect
        assert await a.still_owner()
        await a.release()
        assert a.token is None
        assert await b.try_acquire() is None and b.token == 2     # the fence only grows
        assert not await a.renew()
    finally:
        await rio.close()


async def test_lease_expires_and_the_newer_token_wins(redis_url):
    rio = RedisIO.from_config(RedisConfig(url=redis_url))
    try:
        a, b = lease(rio, "a", ttl=1.0), lease(rio, "b", ttl=1.0)
        assert await a.try_acquire() is None
        # a stops renewing (paused, crashed): b gets it once the ttl ran out, never before.
        assert await b.try_acquire() is not None
        token = await eventually_acquired(b, 3)
        assert token == 2
        assert not await a.still_owner() and not await a.renew()
        lease_key, fence_key = lease_keys("t", "imap", "acct", "INBOX")
        assert lease_key.startswith("{t}:") and fence_key.startswith("{t}:")   # one cluster slot
    finally:
        await rio.close()


async def eventually_acquired(candidate: Lease, timeout: float) -> int:
    with trio.fail_after(timeout):
        while True:
            held = await candidate.try_acquire()
            if held is None:
                return candidate.token
            await trio.sleep(min(held, 0.05))


async def test_an_earlier_life_of_the_same_instance_is_taken_over_only_when_asked(redis_url):
    rio = RedisIO.from_config(RedisConfig(url=redis_url))
    try:
        dead = lease(rio, "host:1", ttl=30.0)          # the previous process of this daemon instance
        other = lease(rio, "host:10", ttl=30.0)        # another daemon whose id shares a prefix
        restarted = lease(rio, "host:1", ttl=30.0)
        assert await dead.try_acquire() is None and dead.token == 1
        assert await restarted.try_acquire() is not None              # by default it waits like anyone
        assert await other.try_acquire(take_over_own=True) is not None    # not its own: never taken
        assert await restarted.try_acquire(take_over_own=True) is None
        assert (restarted.token, restarted.took_over) == (2, True)    # fenced: the token moved on
        assert not await dead.renew() and not await dead.still_owner()
        assert await restarted.try_acquire(take_over_own=True) is None and restarted.token == 2  # idempotent
        await restarted.release()
        assert await other.try_acquire() is None and (other.token, other.took_over) == (3, False)
    finally:
        await rio.close()


async def test_a_take_over_checks_the_whole_owner_not_just_its_prefix(redis_url):
    rio = RedisIO.from_config(RedisConfig(url=redis_url))
    try:
        nested = lease(rio, "node/b", ttl=30.0)        # instance "node/b": its owners start with "node/"
        node = lease(rio, "node", ttl=30.0)
        assert await nested.try_acquire() is None
        assert await node.try_acquire(take_over_own=True) is not None and node.taken_from is None
        assert await nested.still_owner()
        earlier = lease(rio, "node", ttl=30.0, folder="Sent")
        restarted = lease(rio, "node", ttl=30.0, folder="Sent")
        assert await earlier.try_acquire() is None
        assert await restarted.try_acquire(take_over_own=True) is None
        assert restarted.taken_from == earlier.value and restarted.took_over
    finally:
        await rio.close()
