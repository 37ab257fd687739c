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
import psycopg
from psycopg.conninfo import conninfo_to_dict

from .config_convert import INTERNAL, Duration, Secret, SecretKey, Section, Size, doc

__all__ = [
    "AccountConfig",
    "ControlConfig",
    "CoreConfig",
    "DaemonConfig",
    "DeliverConfig",
    "DeliverMatch",
    "HttpConfig",
    "PostgresConfig",
    "ProcessingConfig",
    "QueueConfig",
    "RedisConfig",
    "StoreConfig",
]


#: ``redis.socket_timeout`` is at most this fraction of the shortest single-owner lease (the renewal period).
SOCKET_TIMEOUT_FRACTION = 1 / 3


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
        "daemons sharing Redis and stable across restarts (a restarted daemon takes back at once the jobs, "
        "ledger claims and mailbox leases it held). Empty: \"<hostname>:<hash of control.socket>\", or \"<hostname>:<pid>\" when the control socket "
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
        "Timeout of connecting to Redis and of each command: how long one call may hang. At most a third of "
        "the shortest single-owner lease (imap.lease); XREADGROUP blocks at most half of it (queue.block).")
    ] = 5.0

    def check(self, path: str, problems: list[str]) -> None:
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            scheme = self.url.split(":", 1)[0] if ":" in self.url else self.url[:20]
            # Not the whole URL: it may carry a password.
            problems.append(f"{path}.url: expected a redis://, rediss:// or unix:// URL, got scheme {scheme!r}")
        if self.socket_timeout <= 0:
            problems.append(f"{path}.socket_timeout: must be greater than 0")


class PostgresConfig(Section):
    about = "Where the ledger and the messages are stored. The daemon applies its migrations at start."

    dsn: Annotated[str, doc(
        "libpq connection string or URL. Unless it sets its own, every connection asks for TCP keepalives "
        "(keepalives_idle=10, keepalives_interval=5, keepalives_count=3) and tcp_user_timeout=30000, so a "
        "server that vanished is noticed within about 30s.")] = "postgresql:///inboundd"
    password_file: Annotated[str, SecretKey.file(), doc(
        "File holding the PostgreSQL password, when it is not in the DSN.")] = ""
    password_credential: Annotated[str, SecretKey.credential(), doc(
        "Systemd credential holding the PostgreSQL password, instead of password_file.")] = ""
    pool_min: Annotated[int, doc("Connections the pool keeps open.", ge=1)] = 2
    pool_max: Annotated[int, doc("Most connections the pool opens.", ge=1)] = 16
    connect_timeout: Annotated[Duration, doc(
        "How long to wait for a connection (from the server, or from the pool when all are busy).")] = 5.0

    def check(self, path: str, problems: list[str]) -> None:
        try:
            conninfo_to_dict(self.dsn)
        except psycopg.ProgrammingError:
            # Not libpq's message: it quotes the string, which may carry a password.
            problems.append(f"{path}.dsn: expected a libpq connection string (key=value ...) or a "
                            "postgresql:// URL")
        if self.pool_min > self.pool_max:
            problems.append(f"{path}.pool_min: must not exceed pool_max ({self.pool_max})")


class QueueConfig(Section):
    about = "The Redis Streams queue of pointer jobs: leases, retries, dead letters."

    lease: Annotated[Duration, doc(
        "A claimed job whose consumer stopped renewing it (every lease / 3, while the job runs) for this long is "
        "reclaimed by another consumer. The daemon's own jobs are taken back at once when it restarts.")] = 30.0
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
        "How long one XREADGROUP blocks (at most 1s, so shutdown never strands a job; and at most half of "
        "redis.socket_timeout, which would cut it off).")] = 1.0
    reclaim_interval: Annotated[Duration, doc(
        "Period of the reclaim timer (expired leases, gauges). Due retries are promoted as they fall due; this is "
        "the longest a retry scheduled by another daemon can wait past its due time.")] = 10.0
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
        "Ledger lease of one claim, renewed every lease / 3 while the job runs: how long a holder that died "
        "blocks its message for another daemon (a daemon restarted under the same instance_id takes its own "
        "claims back at once). Every database call of a job (statement, lock wait) is bounded by half of it.")
    ] = 30.0

    def check(self, path: str, problems: list[str]) -> None:
        if self.lease < 1.0:
            problems.append(f"{path}.lease: must be at least 1s")


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


class DeliverMatch(Section):
    """Which stored messages a ``[[deliver]]`` target gets; both empty: every message."""

    tenant: Annotated[str, doc("Only messages of this tenant (\"\": any tenant).")] = ""
    accounts: Annotated[list[str], doc(
        "Only messages of these account ids (empty: any account).")] = msgspec.field(default_factory=list)


#: What a ``[[deliver]]`` target of each kind must name; keys of the other kinds are refused.
_DELIVER_KIND_KEYS = {"webhook": ("url", "secret"), "action_mailbox": ("url", "password"), "python": ("handler",)}


class DeliverConfig(Section):
    """One ``[[deliver]]`` target: where stored messages go (``inboundd/deliver/``)."""

    about = (
        "One [[deliver]] table per target that stored messages are delivered to (none by default): the "
        "transaction that stores a message owes each matching target the message, and the deliverer sends it "
        "until delivered or dead (README: \"Getting mail into your application\"). 2xx delivers; 408, 429, "
        "5xx, timeouts and connection errors retry; any other answer is dead at once (inboundctl deliveries "
        "--dead; inboundctl redeliver). Targets are added, changed and removed on SIGHUP."
    )

    id: Annotated[str, doc(
        "Target id (letters, digits, _ . @ -), unique among the targets; in metrics, logs and inboundctl.",
        pattern=r"^[A-Za-z0-9_.@-]+$", examples=["helpdesk"])]
    kind: Annotated[Literal["webhook", "action_mailbox", "python"], doc(
        "webhook: a JSON POST signed per Standard Webhooks; action_mailbox: the raw message to a Rails Action "
        "Mailbox relay ingress; python: a callable run inside the store transaction.", examples=["webhook"])]
    match: Annotated[DeliverMatch, doc(
        "Which messages go to this target: one tenant and/or some account ids (both empty: every message); "
        "a table, written match = { tenant = \"acme\" } or as match.tenant and match.accounts "
        "below.")] = msgspec.field(default_factory=DeliverMatch)
    url: Annotated[str, doc(
        "webhook: the receiver's URL; action_mailbox: the relay ingress, e.g. "
        "\"https://app.example.com/rails/action_mailbox/relay/inbound_emails\".")] = ""
    secret_file: Annotated[str, SecretKey.file(), doc(
        "webhook: file holding the signing secret, \"whsec_\" + base64 of 24 to 64 random bytes "
        "(printf 'whsec_%s\\n' \"$(head -c 32 /dev/urandom | base64)\").")] = ""
    secret_credential: Annotated[str, SecretKey.credential(), doc(
        "webhook: systemd credential holding the signing secret, instead of secret_file.")] = ""
    password_file: Annotated[str, SecretKey.file(), doc(
        "action_mailbox: file holding the ingress password (Rails' action_mailbox.ingress_password or "
        "RAILS_INBOUND_EMAIL_PASSWORD).")] = ""
    password_credential: Annotated[str, SecretKey.credential(), doc(
        "action_mailbox: systemd credential holding the ingress password, instead of password_file.")] = ""
    handler: Annotated[str, doc(
        "python: \"package.module:function\", called as function(conn, inbound) in the store transaction; "
        "imported at start and again on SIGHUP (an import error is a configuration error). Its exception rolls "
        "the message back and the job is retried (queue.max_attempts applies, not the keys below).")] = ""
    timeout: Annotated[Duration, doc(
        "Deadline of one delivery request, from connecting to the last byte of the answer.")] = 10.0
    max_attempts: Annotated[int, doc(
        "Attempts of one delivery before it is dead.", ge=1, le=1000)] = 12
    backoff_base: Annotated[Duration, doc(
        "Retry backoff of one delivery (exponential from backoff_base, capped at backoff_cap, equal jitter; a "
        "Retry-After is honoured), and of the whole target while it is unreachable.")] = 5.0
    backoff_cap: Annotated[Duration, doc("Longest wait between two attempts.")] = 3600.0
    concurrency: Annotated[int, doc("Requests in flight to this target at once.", ge=1, le=256)] = 8
    ca_file: Annotated[str, doc(
        "CA bundle to verify an https receiver with, besides the system's trust store.")] = ""
    inline_max: Annotated[Size, doc(
        "webhook: attachment contents are inlined (base64) while the message's running total stays within "
        "this; the others are sent without content (content_omitted).")] = 10 * 1024**2
    pending_alert: Annotated[Duration, doc(
        "inboundctl status reports \"degraded\" when this target's oldest pending delivery is older.")] = 900.0

    def secret_needed(self, name: str, required: bool) -> bool:
        return name in _DELIVER_KIND_KEYS[self.kind]

    def check(self, path: str, problems: list[str]) -> None:
        wanted = _DELIVER_KIND_KEYS[self.kind]
        given = {"url": self.url, "handler": self.handler,
                 "secret": self.secret_file or self.secret_credential,
                 "password": self.password_file or self.password_credential}
        for name, value in given.items():
            if value and name not in wanted:
                key = name if name in ("url", "handler") else f"{name}_file"
                problems.append(f"{path}.{key}: not used by kind = \"{self.kind}\"")
        if "url" in wanted:
            if not self.url:
                problems.append(f"{path}.url: required for kind = \"{self.kind}\"")
            elif not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", self.url):
                problems.append(f"{path}.url: expected an http:// or https:// URL, got {self.url!r}")
        if "handler" in wanted and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", self.handler):
            problems.append(f"{path}.handler: expected \"package.module:function\", got {self.handler!r}")
        if self.timeout <= 0:
            problems.append(f"{path}.timeout: must be greater than 0")
        if self.backoff_cap < self.backoff_base:
            problems.append(f"{path}.backoff_cap: must not be smaller than backoff_base")


class AccountConfig(Section):
    """What every provider's account table has: an id unique across every provider, and a tenant."""

    #: The provider calls the daemon back at ``[http] public_url``: required once such an account exists.
    needs_public_url: ClassVar[bool] = False

    id: Annotated[str, doc(
        "Account id (letters, digits, _ . @ -), unique among every provider's accounts; used in jobs, cursors, "
        "logs and metrics.", pattern=r"^[A-Za-z0-9_.@-]+$", examples=["support"])]
    tenant: Annotated[str, doc("Tenant the account's messages belong to.")] = "default"

    def leases(self) -> dict[str, float]:
        """The single-owner Redis leases this account's tasks hold: key name → seconds (0: none).

        The configuration keeps ``redis.socket_timeout`` at most a third of
        the shortest of them. A provider with such a lease (a mailbox owner,
        a renewer) overrides this.
        """
        return {}


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
    deliver: list[DeliverConfig] = msgspec.field(default_factory=list)
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
        targets: dict[str, int] = {}
        for index, target in enumerate(self.deliver):
            if target.id in targets:
                problems.append(f"deliver[{index}].id: duplicate target id {target.id!r}"
                                f" (also deliver[{targets[target.id]}])")
            targets.setdefault(target.id, index)
            for account in target.match.accounts:
                if account not in seen:
                    problems.append(f"deliver[{index}].match.accounts: no account has id {account!r}")
        shortest = self.shortest_lease()
        if shortest is not None and self.redis.socket_timeout > shortest[1] * SOCKET_TIMEOUT_FRACTION:
            key, lease = shortest
            problems.append(
                f"redis.socket_timeout: {self.redis.socket_timeout:g}s is longer than a third of {key} "
                f"({lease:g}s): a Redis call may hang that long, and a lease holder must be able to try its "
                f"next renewal (due every third of the lease) before the lease runs out; lower "
                f"redis.socket_timeout or raise {key}"
            )

    def shortest_lease(self) -> tuple[str, float] | None:
        """The shortest single-owner lease of any account, as (key path, seconds); None without any."""
        found: list[tuple[float, str]] = []
        for name, accounts in self.account_lists():
            for index, account in enumerate(accounts):
                if account is None:
                    continue
                found += [(seconds, f"{name}[{index}].{key}") for key, seconds in account.leases().items()
                          if seconds > 0]
        if not found:
            return None
        seconds, key = min(found)
        return key, seconds

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
