"""Mail for the chaos tests: tokened messages appended in bulk to several mailboxes, and the tally of the store.

A :class:`MailFlow` runs one thread per mailbox that APPENDs (MULTIAPPEND,
one round trip per batch) messages whose Message-ID is a token of their own,
at a steady pace, while the test injects faults. A batch whose APPEND fails
(Dovecot restarting) is looked up in the mailbox by Message-ID after a
reconnect, and only the missing messages are appended again: what
:attr:`MailFlow.appended` holds is exactly what the mailboxes hold. The
expectations are then pure: :func:`tally` compares them with the Message-IDs
of the stored rows.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import psycopg

from imap_helpers import client, message

__all__ = ["MailFlow", "Tally", "stored_message_ids", "tally"]


@dataclass(frozen=True)
class Tally:
    """What the store holds of the messages the mailboxes held."""

    expected: int
    stored: int
    #: Message-IDs in a mailbox and not in the store.
    lost: frozenset[str]
    #: Message-IDs stored more than once.
    duplicated: frozenset[str]
    #: Stored Message-IDs no mailbox held (must be none).
    unexpected: frozenset[str]


def tally(expected: Iterable[str], stored: Iterable[str]) -> Tally:
    """Compare the Message-IDs the mailboxes held with those the store holds (one per stored row)."""
    want = set(expected)
    counts = Counter(stored)
    return Tally(expected=len(want), stored=sum(counts.values()), lost=frozenset(want - counts.keys()),
                 duplicated=frozenset(m for m, n in counts.items() if n > 1),
                 unexpected=frozenset(counts.keys() - want))


def stored_message_ids(pg_dsn: str) -> list[str]:
    """The Message-ID of every stored row (a message stored twice appears twice)."""
    with psycopg.connect(pg_dsn, connect_timeout=2) as conn:
        return [m for (m,) in conn.execute("SELECT message_id FROM inbound_messages")]


def stored_count(pg_dsn: str) -> int:
    with psycopg.connect(pg_dsn, connect_timeout=2) as conn:
        return conn.execute("SELECT count(*) FROM inbound_messages").fetchone()[0]


class MailFlow:
    """Appends batches of *batch* messages to each of *mailboxes* every *interval* seconds, one thread each.

    :meth:`start` with *per_mailbox* appends that many to each mailbox and
    stops; without, the flow goes on until :meth:`stop`. :meth:`join` waits
    for the threads and raises the first error one of them met.
    """

    def __init__(self, port: int, mailboxes: Sequence[tuple[str, str]], *, batch: int = 25,
                 interval: float = 1.0, retry_for: float = 60.0) -> None:
        self.port = port
        self.mailboxes = list(mailboxes)
        self.batch = batch
        self.interval = interval
        self.retry_for = retry_for
        self.run_id = uuid.uuid4().hex[:8]
        self._lock = threading.Lock()
        self._appended: list[str] = []
        #: time.monotonic() of the last APPEND confirmed.
        self.last_append_at = 0.0
        #: APPENDs that failed and were checked and completed after a reconnect.
        self.retried_batches = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    @property
    def appended(self) -> list[str]:
        """Message-IDs (without ``<>``) the mailboxes are known to hold."""
        with self._lock:
            return list(self._appended)

    def mailbox_of(self, message_id: str) -> int:
        """The index (in *mailboxes*) of the mailbox *message_id* was appended to."""
        return int(message_id.split("-")[2])

    def start(self, per_mailbox: int | None = None) -> "MailFlow":
        for index, (user, password) in enumerate(self.mailboxes):
            thread = threading.Thread(target=self._run, args=(index, user, password, per_mailbox), daemon=True,
                                      name=f"mailflow-{index}")
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self) -> None:
        """Ask every thread to stop after its current batch."""
        self._stop.set()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if self._errors:
            raise self._errors[0]
        assert not alive, f"appending threads still running after {timeout:g}s: {alive}"

    def _run(self, index: int, user: str, password: str, per_mailbox: int | None) -> None:
        try:
            n = 0
            while not self._stop.is_set() and (per_mailbox is None or n < per_mailbox):
                count = self.batch if per_mailbox is None else min(self.batch, per_mailbox - n)
                ids = [f"chaos-{self.run_id}-{index}-{n + i}@test" for i in range(count)]
                self._append(user, password, ids, f"chaos {index}")
                n += count
                self._stop.wait(self.interval)   # the pace of the flow
        except BaseException as exc:  # noqa: BLE001 - handed to join()
            self._errors.append(exc)

    def _append(self, user: str, password: str, ids: list[str], subject: str) -> None:
        """APPEND *ids* to INBOX; after a failure, reconnect and append only those the mailbox lacks."""
        deadline = time.monotonic() + self.retry_for
        missing = ids
        while True:
            try:
                with client(self.port, user, password) as imap:
                    if missing is not ids:    # a failed APPEND: what did the server keep?
                        imap.select_folder("INBOX", readonly=True)
                        missing = [m for m in missing if not imap.search(["HEADER", "Message-ID", m])]
                    if missing:
                        imap.multiappend("INBOX", [message(m, f"{subject} {m}", message_id=m) for m in missing])
                with self._lock:
                    self._appended += ids
                    self.last_append_at = time.monotonic()
                return
            except Exception:   # Dovecot going away mid-APPEND, or refusing connections while it restarts
                if time.monotonic() >= deadline:
                    raise
                missing = list(missing)   # a new list: "look up first" on the next attempt
                with self._lock:
                    self.retried_batches += 1
                time.sleep(0.2)   # Dovecot is restarting: try again shortly
