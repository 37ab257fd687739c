"""Gmail test beds: an account on the fake Google, the walker and source over the real queue and PostgreSQL.

:class:`GmailBed` wires what one daemon's Gmail provider uses — a real
``Queue`` on the private Redis, a real ``DbCursorStore`` and ``Processor``
on a fresh PostgreSQL database, and the real Google client code against
:class:`google_fake.FakeGoogle` — so a test can push, walk, consume and look
at what was stored.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import psycopg
import redis
import trio

from google_fake import PUSH_AUDIENCE, PUSH_SERVICE_ACCOUNT, FakeGoogle, authorized_user_file
from inboundd import jobs
from inboundd.config import PostgresConfig, QueueConfig, load_text
from inboundd.consumer import ConsumerPool
from inboundd.ingress.cursors import DbCursorStore, StoredCursor
from inboundd.jobs import GooglePointer, Job
from inboundd.processing import Processor
from inboundd.providers.google.accounts import GoogleAccount, HttpClients, build_account
from inboundd.providers.google.config import GoogleAccountConfig
from inboundd.providers.google.source import GmailSource
from inboundd.providers.google.walk import CURSOR_FOLDER, DbStoredDates, HistoryWalker
from inboundd.queue import Queue, ReclaimTimer
from inboundd.redisio import RedisIO
from inboundd.source import SourceRegistry
from inboundd.store.db import Database
from inboundd.store.migrate import migrate
from inboundd.store.oauth_tokens import DbRotatedTokens
from waiting import eventually

__all__ = ["MAILBOX", "GmailBed", "account_config", "gmail_bed", "google_section", "granted_account"]

MAILBOX = "support@acme.com"
QUEUE = QueueConfig(lease=5.0, backoff_base=0.01, backoff_cap=0.05, block=0.1, claim_batch=8, reclaim_interval=0.1)


def account_config(fake: FakeGoogle, **overrides: Any) -> GoogleAccountConfig:
    settings: dict[str, Any] = dict(
        id="support-gmail", tenant="acme", email=MAILBOX, topic="projects/acme/topics/inboundd-gmail",
        push_audience=PUSH_AUDIENCE, push_service_account=PUSH_SERVICE_ACCOUNT, gmail_url=fake.url,
        certs_url=fake.certs_url,
    )
    settings.update(overrides)
    return GoogleAccountConfig(**settings)


def granted_account(fake: FakeGoogle, clients: HttpClients, rotated: Any = None, *, token: str | None = None,
                    grant: bool = True, **overrides: Any) -> GoogleAccount:
    """An account on *fake* with an authorized-user file holding *token* (default: a new one).

    The token is granted the mailbox unless *grant* is false (a revoked token).
    """
    config = account_config(fake, **overrides)
    token = fake.grant(config.email, token) if grant else (token or "1//revoked")
    return build_account(config, authorized_user_file(fake, token), clients, rotated)


class GmailBed:
    """One daemon's worth of Gmail machinery on real Redis and PostgreSQL, and the fake Google."""

    def __init__(self, fake: FakeGoogle, rio: RedisIO, db: Database, redis_url: str, pg_dsn: str,
                 clients: HttpClients, prefix: str) -> None:
        self.fake = fake
        self.rio = rio
        self.db = db
        self.redis_url = redis_url
        self.pg_dsn = pg_dsn
        self.clients = clients
        self.queue = Queue(rio, QUEUE, prefix=prefix)
        self.cursors = DbCursorStore(db)
        self.walker = HistoryWalker(self.cursors, self.queue, DbStoredDates(db))
        self.accounts: dict[str, GoogleAccount] = {}
        self.source = GmailSource(walker=self.walker)
        self.sources = SourceRegistry()
        self.sources.register("google", self.source)
        self.cfg = load_text("")
        self.processor = Processor(db, self.sources, self.cfg, "bed")

    def add_account(self, **overrides: Any) -> GoogleAccount:
        account = granted_account(self.fake, self.clients, DbRotatedTokens(self.db), **overrides)
        self.accounts[account.id] = account
        self.source.update(self.accounts.values())
        return account

    # ------------------------------------------------------------------ looking

    def stream(self) -> list[Job]:
        """Every job waiting in the queue's stream, in order."""
        with redis.Redis.from_url(self.redis_url) as client:
            return [jobs.decode(fields[b"job"]) for _, fields in client.xrange(self.queue.keys.stream)]

    def message_jobs(self) -> list[Job]:
        return [job for job in self.stream() if job.pointer.names_message]

    def stored(self) -> list[tuple[str, str]]:
        """(provider message id, subject) of every stored message, in storage order."""
        with psycopg.connect(self.pg_dsn) as conn:
            return conn.execute("SELECT provider_message_id, subject FROM inbound_messages ORDER BY id").fetchall()

    async def cursor(self, account: str = "support-gmail") -> int | None:
        stored = await self.cursors.load(account, CURSOR_FOLDER)
        return stored.history_id if stored else None

    async def set_cursor(self, history_id: int, account: str = "support-gmail") -> None:
        await self.cursors.save(account, CURSOR_FOLDER, StoredCursor(history_id=history_id))

    def push_job(self, history_id: int, account: str = "support-gmail") -> Job:
        return jobs.new_job(GooglePointer(account=account, email=self.accounts[account].config.email,
                                          history_id=history_id), tenant="acme")

    # ------------------------------------------------------------------ doing

    async def process_all(self) -> None:
        """Handle every job in the stream (and those they enqueue) one by one, in order, then empty it."""
        done: set[str] = set()
        while True:
            pending = [job for job in self.stream() if job.id not in done]
            if not pending:
                return
            for job in pending:
                await self.processor.handle(job)
                done.add(job.id)

    @asynccontextmanager
    async def consumers(self, count: int = 4) -> AsyncIterator[None]:
        """Real consumers and the reclaim timer on the queue while the block runs."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.queue.run)
            await nursery.start(ReclaimTimer(self.queue, self.queue.cfg, consumer="bed-reclaim").run)
            await nursery.start(ConsumerPool(self.queue, self.processor, self.queue.cfg, "bed", count=count).run)
            yield
            nursery.cancel_scope.cancel()

    async def settled(self) -> bool:
        stats = await self.queue.stats()
        return stats.ready == stats.in_flight == stats.delayed == 0

    async def wait_settled(self, timeout: float = 20.0) -> None:
        await eventually(self.settled, timeout, "the queue to be empty")


@asynccontextmanager
async def gmail_bed(fake: FakeGoogle, rio: RedisIO, redis_url: str, pg_dsn: str,
                    prefix: str = "tg") -> AsyncIterator[GmailBed]:
    db = Database(PostgresConfig(dsn=pg_dsn, pool_min=1, pool_max=8))
    clients = HttpClients()
    await db.open()
    try:
        await db.run(migrate)
        yield GmailBed(fake, rio, db, redis_url, pg_dsn, clients, prefix)
    finally:
        with trio.CancelScope(shield=True):
            await clients.aclose()
            await db.close()


def google_section(directory: Path, fake: FakeGoogle, account: str = "support-gmail", email: str = MAILBOX,
                   **settings: str) -> str:
    """A ``[[google]]`` table for *email* on the fake Google (an authorized-user file under *directory*).

    *settings* are raw TOML values overriding the defaults.
    """
    credentials = directory / f"{account}.json"
    credentials.write_text(authorized_user_file(fake, fake.grant(email)))
    values = {"id": f'"{account}"', "tenant": '"acme"', "email": f'"{email}"',
              "credentials_file": f'"{credentials}"', "topic": '"projects/acme/topics/inboundd-gmail"',
              "push_audience": f'"{PUSH_AUDIENCE}"', "push_service_account": f'"{PUSH_SERVICE_ACCOUNT}"',
              "gmail_url": f'"{fake.url}"', "certs_url": f'"{fake.certs_url}"'}
    values.update(settings)
    return "[[google]]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())
