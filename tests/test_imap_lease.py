"""One owner per mailbox across daemons: the Redis lease, alone and under listeners."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import redis
import trio

from imap_helpers import Recorder, append, make_accounts
from inboundd.config import RedisConfig
from inboundd.providers.imap_lease import MailboxLease, lease_keys
from inboundd.providers.imap_listener import ImapListenerGroup, MemoryCursorStore
from inboundd.redisio import RedisIO
from waiting import eventually

ROOT = Path(__file__).resolve().parent.parent


def lease(rio, owner, ttl=1.0, account="acct", folder="INBOX"):
    return MailboxLease(rio, "t", account, folder, owner=owner, ttl=ttl)


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
        lease_key, fence_key = lease_keys("t", "acct", "INBOX")
        assert lease_key.startswith("{t}:") and fence_key.startswith("{t}:")   # one cluster slot
    finally:
        await rio.close()


async def eventually_acquired(candidate: MailboxLease, timeout: float) -> int:
    with trio.fail_after(timeout):
        while True:
            held = await candidate.try_acquire()
            if held is None:
                return candidate.token
            await trio.sleep(min(held, 0.05))


async def test_an_owner_that_loses_its_lease_stops_listening(dovecot, imap_user, tmp_path, redis_url):
    accounts = make_accounts(tmp_path, dovecot.port, [imap_user], lease=1.5)
    rio = RedisIO.from_config(RedisConfig(url=redis_url))
    group = ImapListenerGroup(accounts, queue=Recorder(), cursors=MemoryCursorStore(), rio=rio, instance_id="a")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            assert group.status()[0].state == "idle"
            # Someone else now holds it (as after a partition longer than the ttl).
            lease_key, _ = lease_keys("inboundd", "acct0", "INBOX")
            with redis.Redis.from_url(redis_url) as client:
                client.set(lease_key, "intruder|99", px=60_000)
            await eventually(lambda: group.status()[0].state == "standby", 3, "the old owner to stand by")
            assert group.status()[0].lease_token is None
            nursery.cancel_scope.cancel()
    finally:
        await rio.close()


_OWNER_SCRIPT = textwrap.dedent("""
    import sys, trio
    sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/tests")
    from imap_helpers import Recorder, make_accounts
    from pathlib import Path
    from inboundd.config import RedisConfig
    from inboundd.providers.imap_listener import ImapListenerGroup, MemoryCursorStore
    from inboundd.redisio import RedisIO

    async def main():
        accounts = make_accounts(Path(sys.argv[2]), int(sys.argv[3]), [(sys.argv[4], sys.argv[5])], lease=2)
        rio = RedisIO.from_config(RedisConfig(url=sys.argv[6]))
        group = ImapListenerGroup(accounts, queue=Recorder(), cursors=MemoryCursorStore(), rio=rio,
                                  instance_id="doomed")
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            print(group.status()[0].state, flush=True)
            await trio.sleep_forever()

    trio.run(main)
""")


async def test_owner_killed_the_other_daemon_takes_over_within_the_lease(dovecot, imap_user, tmp_path, redis_url):
    user, password = imap_user
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER_SCRIPT, str(ROOT), str(tmp_path), str(dovecot.port), user, password, redis_url],
        stdout=subprocess.PIPE, text=True)
    rio = RedisIO.from_config(RedisConfig(url=redis_url))
    try:
        line = await trio.to_thread.run_sync(owner.stdout.readline)
        assert line.strip() == "idle"
        accounts = make_accounts(tmp_path, dovecot.port, [imap_user], lease=2)
        queue = Recorder()
        group = ImapListenerGroup(accounts, queue=queue, cursors=MemoryCursorStore(), rio=rio, instance_id="b")
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            assert group.status()[0].state == "standby"
            os.kill(owner.pid, signal.SIGKILL)      # no release, no LOGOUT: the lease must run out
            killed_at = trio.current_time()
            await eventually(lambda: group.status()[0].state == "idle", 5, "the takeover")
            took = trio.current_time() - killed_at
            assert took < 2 + 1.0, took             # within the 2 s lease (plus a standby wake-up)
            assert group.status()[0].lease_token == 2
            [uid] = await append(dovecot.port, user, password)
            await eventually(lambda: queue.uids() == [uid], 5, "mail through the new owner")
            nursery.cancel_scope.cancel()
    finally:
        if owner.poll() is None:
            owner.kill()
        owner.wait()
        await rio.close()
