"""One IMAP connection on trio, against the private Dovecot: blocking calls in threads, cancellation."""

from __future__ import annotations

import trio

from imap_helpers import make_accounts
from inboundd.providers.imap.conn import Connection


async def test_a_call_cancelled_before_its_thread_started_leaves_the_connection_usable(dovecot, imap_user,
                                                                                     tmp_path) -> None:
    [account] = make_accounts(tmp_path, dovecot.port, [imap_user])
    limiter = trio.CapacityLimiter(1)
    conn = await Connection.open(account, limiter)
    try:
        await limiter.acquire()  # every thread slot busy (other mailboxes' work)
        with trio.move_on_after(0.2) as waited:
            await conn.call(conn.client.noop)  # cancelled while waiting for a slot: never ran
        assert waited.cancelled_caught
        limiter.release()
        # Neither "used by two tasks at once" nor broken: the next command simply runs.
        selected = await conn.select("INBOX", readonly=True)
        assert selected.uidvalidity > 0
    finally:
        await conn.aclose()
