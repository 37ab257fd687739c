"""``kind = "python"``: an application's callable run inside the store transaction.

``handler(conn, inbound)`` gets the psycopg connection of the transaction
that stores the message and an :class:`Inbound` (the parsed message and
its ids). What the handler writes with *conn* commits together with the
message, its outbox rows and the ledger's ``processed`` — or not at all:
an exception rolls everything back, the job is retried like any
processing error and dead-lettered past ``queue.max_attempts``. An
application sharing the PostgreSQL database thus sees each message
exactly once in its own tables.

The handler runs in a savepoint (``conn.transaction()``), so it cannot
commit or roll back the store transaction itself (psycopg refuses).
It runs in a worker thread; keep it short (it holds the ledger row lock).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from ..mime import Message

__all__ = ["HandlerError", "Inbound", "run_handlers"]


class Inbound(msgspec.Struct, frozen=True, kw_only=True):
    """What a Python handler gets besides the connection."""

    #: ``inbound_messages.id`` of the message being stored.
    message_row_id: int
    tenant: str
    account: str
    provider: str
    #: The provider-native identity (``imap:INBOX:7:42``).
    identity: str
    provider_message_id: str
    folder: str | None
    #: The parsed message (``inboundd.mime.Message``).
    message: Message
    #: The raw RFC 822 bytes.
    raw: bytes


class HandlerError(Exception):
    """A Python handler raised; the store transaction rolls back and the job is retried."""

    def __init__(self, target: str, exc: BaseException) -> None:
        super().__init__(f"deliver target {target!r}: handler raised {type(exc).__name__}: {exc}")
        self.target = target


def run_handlers(conn: Any, handlers: Sequence[tuple[str, Callable[..., Any]]], inbound: Inbound) -> None:
    """Call each handler in order, each in a savepoint; the first that raises ends it with :class:`HandlerError`."""
    for target, handler in handlers:
        try:
            with conn.transaction():
                handler(conn, inbound)
        except Exception as exc:
            raise HandlerError(target, exc) from exc
