"""The schema of the daemon's own configuration sections, and the base of every provider's account table.

Every core setting is declared once here, typed and defaulted;
``etc/inboundd.toml`` documents each one. A provider's ``[[name]]`` table
extends :class:`AccountConfig` in its own package (``providers/<name>/``),
and ``config.py`` assembles the whole :class:`CoreConfig` subclass from the
provider registry. Conversion (durations, sizes, secrets, problems with key
paths) is ``config_convert.py``.
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Literal

import msgspec

from .config_convert import INTERNAL, Duration, Secret, SecretKey, Section, Size

__all__ = [
    "AccountConfig",
    "ControlConfig",
    "CoreConfig",
    "DaemonConfig",
    "HttpConfig",
    "PostgresConfig",
    "ProcessingConfig",
    "QueueConfig",
    "RedisConfig",
    "StoreConfig",
]


class DaemonConfig(Section):
    consumers: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 4
    shutdown_grace: Duration = 30.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    instance_id: str = ""


class RedisConfig(Section):
    url: str = "redis://127.0.0.1:6379/0"
    password_file: Annotated[str, SecretKey.file()] = ""
    password_credential: Annotated[str, SecretKey.credential()] = ""
    key_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]+$")] = "inboundd"
    pool_size: Annotated[int, msgspec.Meta(ge=4, le=4096)] = 64
    socket_timeout: Duration = 5.0

    def check(self, path: str, problems: list[str]) -> None:
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            scheme = self.url.split(":", 1)[0] if ":" in self.url else self.url[:20]
            # Not the whole URL: it may carry a password.
            problems.append(f"{path}.url: expected a redis://, rediss:// or unix:// URL, got scheme {scheme!r}")
        if self.socket_timeout <= 0:
            problems.append(f"{path}.socket_timeout: must be greater than 0")


class PostgresConfig(Section):
    dsn: str = "postgresql:///inboundd"
    password_file: Annotated[str, SecretKey.file()] = ""
    password_credential: Annotated[str, SecretKey.credential()] = ""
    pool_min: Annotated[int, msgspec.Meta(ge=1)] = 2
    pool_max: Annotated[int, msgspec.Meta(ge=1)] = 16
    connect_timeout: Duration = 5.0

    def check(self, path: str, problems: list[str]) -> None:
        if self.pool_min > self.pool_max:
            problems.append(f"{path}.pool_min: must not exceed pool_max ({self.pool_max})")


class QueueConfig(Section):
    lease: Duration = 300.0
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 8
    backoff_base: Duration = 5.0
    backoff_cap: Duration = 1800.0
    transient_attempts: Annotated[int, msgspec.Meta(ge=1, le=100000)] = 200
    claim_batch: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 32
    block: Duration = 1.0
    reclaim_interval: Duration = 10.0
    dlq_maxlen: Annotated[int, msgspec.Meta(ge=0)] = 0
    oldest_ready_alert: Duration = 300.0

    def check(self, path: str, problems: list[str]) -> None:
        if self.block > 1.0:
            problems.append(f"{path}.block: must be at most 1s (a longer block strands jobs on cancel)")
        if self.lease < 1.0:
            problems.append(f"{path}.lease: must be at least 1s")
        if self.backoff_cap < self.backoff_base:
            problems.append(f"{path}.backoff_cap: must not be smaller than backoff_base")


class ProcessingConfig(Section):
    max_message_size: Size = 50 * 1024**2
    dedupe_message_id: bool = True
    fetch_timeout: Duration = 120.0
    lease: Annotated[Duration, msgspec.Meta(
        description="Ledger lease of one claim (fetch + parse + store); after it, another consumer may take over."
    )] = 300.0

    def check(self, path: str, problems: list[str]) -> None:
        if self.lease <= self.fetch_timeout:
            problems.append(f"{path}.lease: must be longer than fetch_timeout ({self.fetch_timeout:g}s)")


class StoreConfig(Section):
    keep_raw: bool = False


class HttpConfig(Section):
    listen: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1:8025"])
    graceful_timeout: Duration = 2.5
    public_url: str = ""

    def check(self, path: str, problems: list[str]) -> None:
        for index, bind in enumerate(self.listen):
            if not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}|unix:/.+", bind):
                problems.append(
                    f"{path}.listen[{index}]: expected \"HOST:PORT\" or \"unix:/path\", got {bind!r}"
                )


class ControlConfig(Section):
    socket: str = "/run/inboundd/control.sock"
    mode: Annotated[str, msgspec.Meta(pattern=r"^0?[0-7]{3}$")] = "0660"
    group: str = ""


class AccountConfig(Section):
    """What every provider's account table has: an id unique across every provider, and a tenant."""

    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.@-]+$")]
    tenant: str = "default"


class CoreConfig(Section):
    """The daemon's own sections; ``config.Config`` adds one ``[[name]]`` list per registered provider."""

    daemon: DaemonConfig = msgspec.field(default_factory=DaemonConfig)
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    postgres: PostgresConfig = msgspec.field(default_factory=PostgresConfig)
    queue: QueueConfig = msgspec.field(default_factory=QueueConfig)
    processing: ProcessingConfig = msgspec.field(default_factory=ProcessingConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    control: ControlConfig = msgspec.field(default_factory=ControlConfig)
    #: Where the configuration was read from (not a TOML key).
    source: Annotated[str, INTERNAL] = ""
    #: Secrets read at load time, keyed by the key path that named them.
    secrets: Annotated[dict[str, Secret], INTERNAL] = msgspec.field(default_factory=dict)
    #: Deprecations found at load time (a renamed key used by its old name), one line each.
    warnings: Annotated[list[str], INTERNAL] = msgspec.field(default_factory=list)

    def check(self, path: str, problems: list[str]) -> None:
        seen: dict[str, str] = {}
        for name, accounts in self.account_lists():
            for index, account in enumerate(accounts):
                where = f"{name}[{index}].id"
                if account.id in seen:
                    problems.append(f"{where}: duplicate account id {account.id!r} (also {seen[account.id]})")
                seen.setdefault(account.id, where)

    def account_lists(self) -> list[tuple[str, list[AccountConfig]]]:
        """Every provider's ``[[name]]`` tables, in section order."""
        hints = typing.get_type_hints(type(self))
        lists = []
        for field in msgspec.structs.fields(self):
            hint = hints[field.name]
            if typing.get_origin(hint) is list and issubclass(typing.get_args(hint)[0], AccountConfig):
                lists.append((field.name, getattr(self, field.name)))
        return lists

    def secret(self, key_path: str) -> Secret | None:
        """The secret named at *key_path* without suffix, e.g. ``"imap[0].password"``."""
        return self.secrets.get(key_path)
