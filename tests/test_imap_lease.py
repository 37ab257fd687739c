"""One owner per mailbox across daemons: the Redis lease under IMAP listeners (alone: test_lease.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import redis
import trio

from fakes import RecordingQueue
from imap_helpers import append, make_accounts
from inboundd.config import RedisConfig
from inboundd.ingress.cursors import MemoryCursorStore
from inboundd.ingress.lease import lease_keys
from inboundd.providers.imap.listener import ImapListenerGroup
from inboundd.redisio import RedisIO
from waiting import eventually

ROOT = Path(__file__).resolve().parent.parent


async def test_an_owner_that_loses_its_lease_stops_listening(dovecot, imap_user, tmp_path, redis_url):
    accounts = make_accounts(tmp_path, dovecot.port, [imap_user], lease=1.5)
    rio = RedisIO.from_config(RedisConfig(url=redis_url))
    group = ImapListenerGroup(accounts, queue=RecordingQueue(), cursors=MemoryCursorStore(), rio=rio, instance_id="a")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            assert group.status()[0].state == "idle"
            # Someone else now holds it (as after a partition longer than the ttl).
            lease_key, _ = lease_keys("inboundd", "imap", "acct0", "INBOX")
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
    from fakes import RecordingQueue
    from imap_helpers import make_accounts
    from pathlib import Path
    from inboundd.config import RedisConfig
    from inboundd.ingress.cursors import MemoryCursorStore
    from inboundd.providers.imap.listener import ImapListenerGroup
    from inboundd.redisio import RedisIO

    async def main():
        accounts = make_accounts(Path(sys.argv[2]), int(sys.argv[3]), [(sys.argv[4], sys.argv[5])], lease=2)
        rio = RedisIO.from_config(RedisConfig(url=sys.argv[6]))
        group = ImapListenerGroup(accounts, queue=RecordingQueue(), cursors=MemoryCursorStore(), rio=rio,
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
        queue = RecordingQueue()
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
