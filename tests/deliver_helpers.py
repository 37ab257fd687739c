"""Builders for delivery tests: store messages the way processing does, and make [[deliver]] targets.

Messages are stored through the real store transaction
(``processing.commit_message``) after a real ledger claim, so their outbox
rows are exactly the ones the daemon would owe.
"""

from __future__ import annotations

import base64
import itertools
from typing import Any

from inboundd.config_schema import DeliverConfig, DeliverMatch
from inboundd.deliver.targets import Plan, Router, Target
from inboundd.jobs import ImapPointer, new_job
from inboundd.mime import parse_message
from inboundd.processing import commit_message
from inboundd.source import FetchedMessage
from inboundd.store import ledger

__all__ = ["SECRET", "raw_message", "store_messages", "webhook_target"]

#: A Standard Webhooks secret minted for the tests (32 bytes).
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
_uids = itertools.count(1)


def raw_message(n: int, *, attachment: bytes | None = None, subject: str | None = None) -> bytes:
    """A small RFC 822 message, with one PDF-ish attachment if given."""
    head = (f"From: Customer {n} <c{n}@example.com>\r\nTo: support@example.org\r\n"
            f"Subject: {subject or f'order {n}'}\r\nMessage-ID: <deliver-{n}@example.com>\r\n"
            "Date: Wed, 8 Nov 2023 10:00:00 +0100\r\nMIME-Version: 1.0\r\n")
    if attachment is None:
        return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\nhello " + str(n) + "\r\n").encode()
    encoded = base64.encodebytes(attachment).decode().replace("\n", "\r\n")
    return (head + 'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\n'
            "Content-Type: text/plain; charset=utf-8\r\n\r\nsee attached\r\n--b1\r\n"
            'Content-Type: application/pdf; name="a.pdf"\r\nContent-Disposition: attachment; filename="a.pdf"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n" + encoded + "--b1--\r\n").encode()


def webhook_target(url: str, target_id: str = "hook", **settings: Any) -> Target:
    """A ready webhook target with the tests' secret."""
    from inboundd.deliver.signing import parse_secret

    cfg = DeliverConfig(id=target_id, kind="webhook", url=url, secret_file="unused", **settings)
    return Target(cfg, key=parse_secret(SECRET))


def mailbox_target(url: str, password: str, target_id: str = "rails", **settings: Any) -> Target:
    cfg = DeliverConfig(id=target_id, kind="action_mailbox", url=url, password_file="unused", **settings)
    return Target(cfg, password=password)


def store_messages(conn: Any, raws: list[bytes], targets: list[Target], *, tenant: str = "t1",
                   account: str = "support", keep_raw: bool = False) -> list[int]:
    """Store each raw message as processing would (claim, then the store transaction); their row ids."""
    plan = Router(targets).plan(tenant, account)
    ids = []
    for raw in raws:
        job = new_job(ImapPointer(account=account, folder="INBOX", uidvalidity=7, uid=next(_uids)), tenant=tenant)
        key = ledger.Key(job.tenant, job.account, job.identity())
        owner = f"test:{job.id}"
        ledger.claim(conn, key, provider=job.provider, job_id=job.id, owner=owner, lease=60)
        fetched = FetchedMessage(raw=raw, provider_message_id=f"7:{job.pointer.uid}", folder="INBOX", size=len(raw))
        result = commit_message(conn, key, owner, job, fetched, parse_message(raw), dedupe_message_id=False,
                                keep_raw=keep_raw, plan=plan)
        assert result.kind == "stored", result
        ids.append(result.message_row_id)
    return ids


__all__ += ["DeliverMatch", "Plan", "mailbox_target"]
