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
from typing import Annotated, ClassVar, Literal

import msgspec

from .config_convert import INTERNAL, Duration, Secret, SecretKey, Section, Size, doc

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
    about = "The daemon process itself: consumers, shutdown, logging."

    consumers: Annotated[int, doc(
        "Number of queue consumer tasks (0 = intake only). Changes apply on SIGHUP.", ge=0, le=1024)] = 4
    shutdown_grace: Annotated[Duration, doc(
        "On SIGTERM, in-flight jobs get this long to finish before the daemon exits; unfinished jobs stay "
        "leased in Redis and are reclaimed, never lost.")] = 30.0
    log_level: Annotated[Literal["debug", "info", "warning", "error"], doc(
        "Least severe level logged. Changes apply on SIGHUP.")] = "info"
    log_format: Annotated[Literal["text", "json"], doc(
        "text: one event per line as key=value pairs; json: one JSON object per line. "
        "Changes apply on SIGHUP.")] = "text"
    instance_id: Annotated[str, doc(
        "Name of this daemon instance in Redis consumer names and ledger leases; it must be unique among the "
        "daemons sharing Redis and stable across restarts (a restarted daemon takes back the jobs it held at "
        "once). Empty: \"<hostname>:<hash of control.socket>\", or \"<hostname>:<pid>\" when the control socket "
        "is disabled (held jobs then wait for queue.lease).")] = ""


class RedisConfig(Section):
    about = (
        "Where the queue lives. The queue is only as durable as Redis: run it with \"appendonly yes\" "
        "(appendfsync everysec, or always to lose nothing); inboundd logs redis.not_durable at start when the "
        "append-only file is off."
    )

    url: Annotated[str, doc(
        "redis://[:password@]host:port/db, rediss:// for TLS, or unix:///path?db=0.")] = "redis://127.0.0.1:6379/0"
    password_file: Annotated[str, SecretKey.file(), doc(
        "File holding the Redis password, when it is not in the URL.")] = ""
    password_credential: Annotated[str, SecretKey.credential(), doc(
        "Systemd credential holding the Redis password, instead of password_file.")] = ""
    key_prefix: Annotated[str, doc(
        "Prefix of every key; all keys share the hash tag {key_prefix} (Redis Cluster).",
        pattern=r"^[A-Za-z0-9_.:-]+$")] = "inboundd"
    pool_size: Annotated[int, doc(
        "Connections in the shared pool (more than consumers + listeners + HTTP).", ge=4, le=4096)] = 64
    socket_timeout: Annotated[Duration, doc(
        "Timeout of connecting to Redis and of each command.")] = 5.0

    def check(self, path: str, problems: list[str]) -> None:
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            scheme = self.url.split(":", 1)[0] if ":" in self.url else self.url[:20]
            # Not the whole URL: it may carry a password.
            problems.append(f"{path}.url: expected a redis://, rediss:// or unix:// URL, got scheme {scheme!r}")
        if self.socket_timeout <= 0:
            problems.append(f"{path}.socket_timeout: must be greater than 0")


class PostgresConfig(Section):
    about = "Where the ledger and the messages are stored. The daemon applies its migrations at start."

    dsn: Annotated[str, doc("libpq connection string or URL.")] = "postgresql:///inboundd"
    password_file: Annotated[str, SecretKey.file(), doc(
        "File holding the PostgreSQL password, when it is not in the DSN.")] = ""
    password_credential: Annotated[str, SecretKey.credential(), doc(
        "Systemd credential holding the PostgreSQL password, instead of password_file.")] = ""
    pool_min: Annotated[int, doc("Connections the pool keeps open.", ge=1)] = 2
    pool_max: Annotated[int, doc("Most connections the pool opens.", ge=1)] = 16
    connect_timeout: Annotated[Duration, doc(
        "How long to wait for a connection (from the server, or from the pool when all are busy).")] = 5.0

    def check(self, path: str, problems: list[str]) -> None:
        if self.pool_min > self.pool_max:
            problems.append(f"{path}.pool_min: must not exceed pool_max ({self.pool_max})")


class QueueConfig(Section):
    about = "The Redis Streams queue of pointer jobs: leases, retries, dead letters."

    lease: Annotated[Duration, doc(
        "A claimed job not acknowledged within this time is reclaimed by another consumer.")] = 300.0
    max_attempts: Annotated[int, doc(
        "Deliveries of a job (failures plus lost workers) before it is dead-lettered.", ge=1, le=1000)] = 8
    backoff_base: Annotated[Duration, doc(
        "First retry delay: retries back off exponentially from it, up to backoff_cap, with full jitter.")] = 5.0
    backoff_cap: Annotated[Duration, doc("Longest retry delay.")] = 1800.0
    transient_attempts: Annotated[int, doc(
        "Retries for transient infrastructure errors (PostgreSQL or provider unreachable, throttling); they do "
        "not count against max_attempts.", ge=1, le=100000)] = 200
    claim_batch: Annotated[int, doc("Jobs claimed per XREADGROUP.", ge=1, le=1000)] = 32
    block: Annotated[Duration, doc(
        "How long one XREADGROUP blocks (at most 1s, so shutdown never strands a job).")] = 1.0
    reclaim_interval: Annotated[Duration, doc(
        "Period of the reclaim timer (expired leases, due retries, gauges).")] = 10.0
    dlq_maxlen: Annotated[int, doc(
        "Cap of the dead-letter stream; 0 = unbounded. Each eviction is logged.", ge=0)] = 0
    oldest_ready_alert: Annotated[Duration, doc(
        "inboundctl status reports \"degraded\" when the oldest ready job is older.")] = 300.0

    def check(self, path: str, problems: list[str]) -> None:
        if self.block > 1.0:
            problems.append(f"{path}.block: must be at most 1s (a longer block strands jobs on cancel)")
        if self.lease < 1.0:
            problems.append(f"{path}.lease: must be at least 1s")
        if self.backoff_cap < self.backoff_base:
            problems.append(f"{path}.backoff_cap: must not be smaller than backoff_base")


class ProcessingConfig(Section):
    about = "What a consumer does with a job: fetch, parse, deduplicate, store."

    max_message_size: Annotated[Size, doc(
        "Larger messages are skipped with reason \"oversize\" (before download when the provider reports "
        "the size).")] = 50 * 1024**2
    dedupe_message_id: Annotated[bool, doc(
        "Within one account, a Message-ID already stored is recorded as \"duplicate\". Turn off for senders "
        "that reuse Message-IDs.")] = True
    fetch_timeout: Annotated[Duration, doc("Deadline for fetching one message from its provider.")] = 120.0
    lease: Annotated[Duration, doc(
        "Ledger lease of one claim (fetch + parse + store), longer than fetch_timeout; after it, another "
        "consumer may take over a claim whose holder died.")] = 300.0

    def check(self, path: str, problems: list[str]) -> None:
        if self.lease <= self.fetch_timeout:
            problems.append(f"{path}.lease: must be longer than fetch_timeout ({self.fetch_timeout:g}s)")


class StoreConfig(Section):
    about = "The stored messages (inbound_messages)."

    keep_raw: Annotated[bool, doc(
        "Keep the raw MIME in inbound_messages.raw so messages can be re-parsed later.")] = False


class HttpConfig(Section):
    about = "The public HTTP server: health, readiness, metrics and the providers' webhooks."

    listen: Annotated[list[str], doc(
        "Addresses to listen on: \"HOST:PORT\", \"[::1]:PORT\" or \"unix:/path\". Serves /healthz, /readyz, "
        "/metrics and the providers' webhooks under /webhooks/.")] = msgspec.field(
            default_factory=lambda: ["127.0.0.1:8025"])
    graceful_timeout: Annotated[Duration, doc(
        "Time given to in-flight requests on shutdown (keep just above the longest request).")] = 2.5
    public_url: Annotated[str, doc(
        "The public https URL providers reach this daemon at (a reverse proxy in front of listen, say), "
        "without a trailing slash. Required once a [[microsoft]] account exists: Graph posts change "
        "notifications to PUBLIC_URL/webhooks/microsoft and lifecycle events to "
        "PUBLIC_URL/webhooks/microsoft/lifecycle, and calls https URLs only.")] = ""

    def check(self, path: str, problems: list[str]) -> None:
        self.public_url = self.public_url.rstrip("/")
        if self.public_url and not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", self.public_url):
            problems.append(f"{path}.public_url: expected an https:// URL without query or fragment "
                            f"(what providers call back), got {self.public_url!r}")
        for index, bind in enumerate(self.listen):
            if not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}|unix:/.+", bind):
                problems.append(
                    f"{path}.listen[{index}]: expected \"HOST:PORT\" or \"unix:/path\", got {bind!r}"
                )


class ControlConfig(Section):
    about = "The local control socket inboundctl talks to."

    socket: Annotated[str, doc(
        "Unix socket of the control API used by inboundctl (never TCP); a relative path is relative to this "
        "file's directory. \"\" disables the control socket.")] = "/run/inboundd/control.sock"
    mode: Annotated[str, doc("File mode of the socket (octal).", pattern=r"^0?[0-7]{3}$")] = "0660"
    group: Annotated[str, doc("Group owning the socket; \"\" keeps the daemon's group.")] = ""


class AccountConfig(Section):
    """What every provider's account table has: an id unique across every provider, and a tenant."""

    #: The provider calls the daemon back at ``[http] public_url``: required once such an account exists.
    needs_public_url: ClassVar[bool] = False

    id: Annotated[str, doc(
        "Account id (letters, digits, _ . @ -), unique among every provider's accounts; used in jobs, cursors, "
        "logs and metrics.", pattern=r"^[A-Za-z0-9_.@-]+$", examples=["support"])]
    tenant: Annotated[str, doc("Tenant the account's messages belong to.")] = "default"


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
            if accounts and type(accounts[0]).needs_public_url and not self.http.public_url:
                problems.append(f"http.public_url: required once a [[{name}]] account exists "
                                f"(the provider calls the daemon back there)")

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
