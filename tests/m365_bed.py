"""A Microsoft 365 test bed: fake Azure AD and Graph, a mailbox, an app, and the config that points at them.

Used by the Graph tests that run inboundd's own pieces (the renewer, the
webhook, the daemon in this process or as a subprocess) against the
loopback fakes of ``graph_fakes``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from graph_fakes import FakeAzureAD, FakeGraph, make_ca
from services import free_port

__all__ = ["GraphBed", "MAILBOX", "SECRET", "mime", "pools"]

MAILBOX = "support@acme.com"
SECRET = "app-s3cret"


def mime(n: int, subject: str = "hello") -> bytes:
    return (f"From: sender{n}@example.com\r\nTo: {MAILBOX}\r\nSubject: {subject} {n}\r\n"
            f"Message-ID: <m{n}.{id(subject)}@example.com>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
            f"\r\nbody {n}\r\n").encode()


class GraphBed:
    """Fakes started in *directory*; :meth:`close` stops them."""

    def __init__(self, directory: Path, *, directory_id: str = "acme.onmicrosoft.com",
                 folders: tuple[str, ...] = ("Inbox", "Archive", "Sent Items"), validate_urls: bool = True) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.ca, self.ca_file = make_ca(directory)
        self.aad = FakeAzureAD(self.ca).start()
        self.app = self.aad.register_app(directory_id, "app-1", SECRET)
        self.graph = FakeGraph(self.aad, validate_urls=validate_urls).start()
        self.box = self.graph.add_mailbox(MAILBOX, self.app.tid, folders)
        self.directory_id = directory_id
        self.secret_file = directory / "m365.secret"
        self.secret_file.write_text(SECRET + "\n")
        #: The port the daemon's public listener will use (public_url points at it).
        self.port = free_port()

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def account(self, account_id: str = "support-m365", **keys: Any) -> str:
        """A ``[[microsoft]]`` table for the bed's mailbox, *keys* overriding or adding settings."""
        values: dict[str, Any] = {
            "id": account_id, "tenant": "acme", "directory_id": self.directory_id, "client_id": "app-1",
            "client_secret_file": str(self.secret_file), "mailbox": MAILBOX, "folders": ["Inbox"],
            "authority_url": self.aad.url, "graph_url": self.graph.url, "ca_file": self.ca_file,
        }
        values.update(keys)
        lines = ["[[microsoft]]"] + [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        return "\n".join(lines) + "\n"

    def load_account(self, clients: Any, account_id: str = "support-m365", **keys: Any) -> Any:
        """A run-time ``MicrosoftAccount`` of :meth:`account`'s table, loaded by the real configuration loader."""
        from inboundd import config
        from inboundd.providers.microsoft.account import MicrosoftAccount

        cfg = config.load_text(f'[http]\npublic_url = "{self.public_url}"\n' + self.account(account_id, **keys))
        return MicrosoftAccount(cfg.microsoft[0], cfg.secret("microsoft[0].client_secret"), clients)

    def config(self, redis_url: str, pg_dsn: str, accounts: str | None = None, *, consumers: int = 2,
               control: Path | None = None, extra: str = "") -> str:
        """A whole configuration file for a daemon in this process."""
        return (
            f'[daemon]\nconsumers = {consumers}\nshutdown_grace = "5s"\n'
            f'[redis]\nurl = "{redis_url}"\nsocket_timeout = "2s"\n'
            f'[postgres]\ndsn = "{pg_dsn}"\nconnect_timeout = "2s"\n'
            f'[http]\nlisten = ["127.0.0.1:{self.port}"]\ngraceful_timeout = "1s"\n'
            f'public_url = "{self.public_url}"\n'
            f'[control]\nsocket = "{control or self.directory / "control.sock"}"\n'
            f"{accounts if accounts is not None else self.account()}{extra}"
        )

    def close(self) -> None:
        self.graph.stop()
        self.aad.stop()


@asynccontextmanager
async def pools(redis_url: str, pg_dsn: str) -> AsyncIterator[tuple[Any, Any, Any]]:
    """The daemon's Redis pool, PostgreSQL pool (migrated) and HTTP clients on the suite's servers; closed after."""
    from inboundd.config_schema import PostgresConfig, RedisConfig
    from inboundd.ingress.httpclients import HttpClients
    from inboundd.redisio import RedisIO
    from inboundd.store.db import Database
    from inboundd.store.migrate import migrate

    rio = RedisIO.from_config(RedisConfig(url=redis_url))
    db = Database(PostgresConfig(dsn=pg_dsn))
    clients = HttpClients()
    try:
        await db.open()
        await db.run(migrate)
        yield rio, db, clients
    finally:
        await clients.aclose()
        await db.close()
        await rio.close()
