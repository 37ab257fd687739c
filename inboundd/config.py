"""The one configuration loader: TOML file → typed, validated :class:`Config`.

Every setting is declared once here, typed and defaulted; ``etc/inboundd.toml``
documents each one. Loading never stops at the first problem: every unknown
key, wrong type, bad duration or size and missing secret is collected and
reported together as a :class:`ConfigError`, each line naming the file and the
key path (``imap[1].port``) and what was expected.

Secrets never live in the TOML file itself. A secret is given either as
``*_file`` (a path whose contents are the secret) or as ``*_credential`` (the
name of a systemd credential, read from ``$CREDENTIALS_DIRECTORY``). They are
read at load time, so a missing file is a configuration error, and they are
wrapped in :class:`Secret`, whose ``repr`` never shows the value.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import socket
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "Config",
    "ConfigError",
    "Secret",
    "default_config_path",
    "default_instance_id",
    "load",
    "load_text",
    "parse_duration",
    "parse_size",
]

DEFAULT_PATH = "/etc/inboundd.toml"


# --------------------------------------------------------------------------- values


class _DurationMarker:
    """Annotation marker: the value is a duration string (or number of seconds)."""


class _SizeMarker:
    """Annotation marker: the value is a size string (or number of bytes)."""


#: Seconds as float, written in the file as ``"30s"``, ``"5m"``, ``"1h30m"``, ``"250ms"`` or a number.
Duration = Annotated[float, _DurationMarker]
#: Bytes as int, written in the file as ``"10MiB"``, ``"512KB"``, ``"1G"`` or a number.
Size = Annotated[int, _SizeMarker]

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def parse_duration(value: object) -> float:
    """Parse ``"30s"``, ``"5m"``, ``"1h30m"``, ``"250ms"`` or a non-negative number into seconds.

    Raises ``ValueError`` with a message saying what was expected.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like \"30s\", got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"expected a non-negative duration, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like \"30s\", got {type(value).__name__}")
    text = value.strip().lower()
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(
            f"expected a duration like \"30s\", \"5m\", \"1h30m\" or \"250ms\", got {value!r}"
        )
    return total


def parse_size(value: object) -> int:
    """Parse ``"10MiB"``, ``"512KB"``, ``"1G"`` or a non-negative integer into bytes.

    Raises ``ValueError`` with a message saying what was expected.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size like \"10MiB\", got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a non-negative size, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size like \"10MiB\", got {type(value).__name__}")
    match = _SIZE_RE.fullmatch(value.strip().lower())
    if not match or match.group(2) not in _SIZE_UNITS:
        raise ValueError(f"expected a size like \"10MiB\", \"512KB\" or \"1GiB\", got {value!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


class Secret:
    """A secret value that never shows itself in ``repr``/``str`` (logs, errors)."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source

    def reveal(self) -> str:
        """Return the secret itself; call only where it is sent to its server."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret(from {self.source})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# --------------------------------------------------------------------------- sections


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    def check(self, path: str, problems: list[str]) -> None:
        """Cross-field validation; append ``"path: message"`` lines to *problems*."""


class DaemonConfig(_Section):
    consumers: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 4
    shutdown_grace: Duration = 30.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    instance_id: str = ""


class RedisConfig(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    password_file: str = ""
    password_credential: str = ""
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


class PostgresConfig(_Section):
    dsn: str = "postgresql:///inboundd"
    password_file: str = ""
    password_credential: str = ""
    pool_min: Annotated[int, msgspec.Meta(ge=1)] = 2
    pool_max: Annotated[int, msgspec.Meta(ge=1)] = 16
    connect_timeout: Duration = 5.0

    def check(self, path: str, problems: list[str]) -> None:
        if self.pool_min > self.pool_max:
            problems.append(f"{path}.pool_min: must not exceed pool_max ({self.pool_max})")


class QueueConfig(_Section):
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


class ProcessingConfig(_Section):
    max_message_size: Size = 50 * 1024**2
    dedupe_message_id: bool = True
    fetch_timeout: Duration = 120.0
    # Ledger lease of one claim (fetch + parse + store); after it, another consumer may take over.
    lease: Duration = 300.0

    def check(self, path: str, problems: list[str]) -> None:
        if self.lease <= self.fetch_timeout:
            problems.append(f"{path}.lease: must be longer than fetch_timeout ({self.fetch_timeout:g}s)")


class StoreConfig(_Section):
    keep_raw: bool = False


class HttpConfig(_Section):
    listen: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1:8025"])
    graceful_timeout: Duration = 2.5
    public_url: str = ""

    def check(self, path: str, problems: list[str]) -> None:
        for index, bind in enumerate(self.listen):
            if not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}|unix:/.+", bind):
                problems.append(
                    f"{path}.listen[{index}]: expected \"HOST:PORT\" or \"unix:/path\", got {bind!r}"
                )


class ControlConfig(_Section):
    socket: str = "/run/inboundd/control.sock"
    mode: Annotated[str, msgspec.Meta(pattern=r"^0?[0-7]{3}$")] = "0660"
    group: str = ""


class ImapAccountConfig(_Section):
    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.@-]+$")]
    host: str
    username: str
    tenant: str = "default"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    ca_file: str = ""
    auth: Literal["password", "xoauth2"] = "password"
    password_file: str = ""
    password_credential: str = ""
    oauth_token_file: str = ""
    folders: list[str] = msgspec.field(default_factory=lambda: ["INBOX"])
    start_from: str = "now"
    idle: bool = True
    idle_refresh: Duration = 1500.0
    poll_interval: Duration = 60.0
    poll_with_idle: bool = False
    read_timeout: Duration = 60.0
    auth_failure_limit: Annotated[int, msgspec.Meta(ge=1)] = 3
    auth_retry_interval: Duration = 900.0
    reconnect_base: Duration = 1.0
    reconnect_cap: Duration = 300.0
    post_action: str = "none"
    fetch_connections: Annotated[int, msgspec.Meta(ge=1, le=32)] = 2
    #: Every this long while idling, end IDLE and EXAMINE the folder again, whatever the server
    #: said meanwhile (keepalives prove the connection, not the folder): a dead connection is
    #: then noticed within read_timeout, and a folder replaced under the listener by its new
    #: UIDVALIDITY.
    noop_interval: Duration = 300.0
    #: Mailbox ownership across daemons sharing Redis: the owner renews a lease this long;
    #: after a crash another daemon takes over within it. 0 disables ownership.
    lease: Duration = 30.0

    def check(self, path: str, problems: list[str]) -> None:
        if self.port == 0:
            self.port = 993 if self.tls == "implicit" else 143
        if not self.folders:
            problems.append(f"{path}.folders: expected at least one folder")
        if not re.fullmatch(r"now|all|last:[1-9]\d*", self.start_from):
            problems.append(
                f"{path}.start_from: expected \"now\", \"all\" or \"last:N\", got {self.start_from!r}"
            )
        if self.idle_refresh > 29 * 60:
            problems.append(f"{path}.idle_refresh: must be at most 29m (RFC 2177)")
        for name in ("idle_refresh", "noop_interval", "poll_interval", "read_timeout"):
            if getattr(self, name) <= 0:
                problems.append(f"{path}.{name}: must be greater than 0 (0 would be a busy loop)")
        if not re.fullmatch(r"none|seen|delete|move:.+", self.post_action):
            problems.append(
                f"{path}.post_action: expected \"none\", \"seen\", \"delete\" or \"move:FOLDER\", "
                f"got {self.post_action!r}"
            )
        if self.post_action.startswith("move:") and self.post_action[5:] in self.folders:
            problems.append(
                f"{path}.post_action: moves into {self.post_action[5:]!r}, which is also in folders: "
                "every moved message would be ingested again"
            )
        if 0 < self.lease < 1.0:
            problems.append(f"{path}.lease: must be 0 (no ownership) or at least 1s")
        if self.auth == "xoauth2" and not self.oauth_token_file:
            problems.append(f"{path}.oauth_token_file: required when auth = \"xoauth2\"")


class Config(_Section):
    daemon: DaemonConfig = msgspec.field(default_factory=DaemonConfig)
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    postgres: PostgresConfig = msgspec.field(default_factory=PostgresConfig)
    queue: QueueConfig = msgspec.field(default_factory=QueueConfig)
    processing: ProcessingConfig = msgspec.field(default_factory=ProcessingConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    control: ControlConfig = msgspec.field(default_factory=ControlConfig)
    imap: list[ImapAccountConfig] = msgspec.field(default_factory=list)
    #: Where the configuration was read from (not a TOML key).
    source: str = ""
    #: Secrets read at load time, keyed by the key path that named them.
    secrets: dict[str, Secret] = msgspec.field(default_factory=dict)

    def check(self, path: str, problems: list[str]) -> None:
        seen: dict[str, str] = {}
        for index, account in enumerate(self.imap):
            where = f"imap[{index}].id"
            if account.id in seen:
                problems.append(f"{where}: duplicate account id {account.id!r} (also {seen[account.id]})")
            seen.setdefault(account.id, where)

    def secret(self, key_path: str) -> Secret | None:
        """The secret named at *key_path* without suffix, e.g. ``"imap[0].password"``."""
        return self.secrets.get(key_path)


_INTERNAL_FIELDS = {"source", "secrets"}


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {line}" for line in problems))


# --------------------------------------------------------------------------- conversion


def _marker(annotation: Any) -> type | None:
    if typing.get_origin(annotation) is Annotated:
        for extra in typing.get_args(annotation)[1:]:
            if extra in (_DurationMarker, _SizeMarker):
                return extra
    return None


def _struct_type(annotation: Any) -> type[_Section] | None:
    if isinstance(annotation, type) and issubclass(annotation, _Section):
        return annotation
    return None


def _list_item_struct(annotation: Any) -> type[_Section] | None:
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return _struct_type(item)
    return None


def _describe(value: object) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a float"}.get(type(value), type(value).__name__)


def _convert_section(cls: type[_Section], data: object, path: str, problems: list[str]) -> _Section | None:
    where = path or "top level"
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a table, got {_describe(data)}")
        return None
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in msgspec.structs.fields(cls) if f.name not in _INTERNAL_FIELDS]
    required = {f.name for f in msgspec.structs.fields(cls) if f.required}
    prefix = f"{path}." if path else ""
    for key in data:
        if not path and key in _UNSUPPORTED_SECTIONS:
            problems.append(f"{key}: {_UNSUPPORTED_SECTIONS[key]}")
        elif key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{prefix}{key}: unknown key{hint}")
    values: dict[str, Any] = {}
    ok = True
    for name in names:
        key_path = f"{prefix}{name}"
        if name not in data and _struct_type(hints[name]) is not None:
            # An absent section still gets its defaults validated and derived.
            values[name] = _convert_section(_struct_type(hints[name]), {}, key_path, problems)
            continue
        if name not in data:
            if name in required:
                problems.append(f"{key_path}: required key is missing")
                ok = False
            continue
        before = len(problems)
        value = _convert_value(hints[name], data[name], key_path, problems)
        if len(problems) > before:
            ok = False
        else:
            values[name] = value
    if not ok:
        return None
    section = cls(**values)
    section.check(path, problems)
    return section


def _convert_value(annotation: Any, value: object, path: str, problems: list[str]) -> Any:
    marker = _marker(annotation)
    try:
        if marker is _DurationMarker:
            return parse_duration(value)
        if marker is _SizeMarker:
            return parse_size(value)
    except ValueError as exc:
        problems.append(f"{path}: {exc}")
        return None
    struct = _struct_type(annotation)
    if struct is not None:
        return _convert_section(struct, value, path, problems)
    item_struct = _list_item_struct(annotation)
    if item_struct is not None:
        if not isinstance(value, list):
            problems.append(f"{path}: expected an array of tables ([[{path}]]), got {_describe(value)}")
            return None
        return [_convert_section(item_struct, item, f"{path}[{i}]", problems) for i, item in enumerate(value)]
    try:
        return msgspec.convert(value, annotation, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        # msgspec appends "- at `$[0]`" for nested positions; keep our own path instead.
        message = re.sub(r"\s*- at `\$(.*)`$", lambda m: f" (at {path}{m.group(1)})", message)
        shown = "" if isinstance(value, (dict, list)) else f" (value {value!r})"
        problems.append(f"{path}: {message}{shown}")
        return None


# --------------------------------------------------------------------------- secrets

#: (section list, secret name) pairs: each may come from ``NAME_file`` or ``NAME_credential``.
_SECRET_KEYS: list[tuple[str, str, bool]] = [
    # (section, secret name, required)
    ("redis", "password", False),
    ("postgres", "password", False),
    ("imap", "password", True),
]

#: Sections of the architecture that this build does not implement yet: named
#: precisely instead of being reported as unknown keys.
_UNSUPPORTED_SECTIONS = {
    "microsoft": "[[microsoft]] accounts (Graph change notifications) are not supported by this build yet",
    "google": "[[google]] accounts (Gmail Pub/Sub push) are not supported by this build yet",
}


def _read_secret(path_or_name: str, kind: str, key_path: str, base: Path, problems: list[str]) -> Secret | None:
    if kind == "file":
        file = Path(path_or_name)
        if not file.is_absolute():
            file = base / file
    else:
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if not creds:
            problems.append(
                f"{key_path}_credential: credential {path_or_name!r} named but $CREDENTIALS_DIRECTORY "
                "is not set (use LoadCredential= in the unit, or a *_file key)"
            )
            return None
        file = Path(creds) / path_or_name
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(f"{key_path}_{kind}: cannot read secret file {str(file)!r}: {exc.strerror or exc}")
        return None
    value = text.rstrip("\r\n")
    if not value:
        problems.append(f"{key_path}_{kind}: secret file {str(file)!r} is empty")
        return None
    return Secret(value, f"{key_path}_{kind}")


def _load_secrets(config: Config, base: Path, problems: list[str]) -> None:
    for section, name, required in _SECRET_KEYS:
        entries = getattr(config, section)
        items = list(enumerate(entries)) if isinstance(entries, list) else [(None, entries)]
        for index, entry in items:
            if entry is None:
                continue
            key_path = section if index is None else f"{section}[{index}]"
            key_path = f"{key_path}.{name}"
            from_file = getattr(entry, f"{name}_file", "")
            from_cred = getattr(entry, f"{name}_credential", "")
            if from_file and from_cred:
                problems.append(f"{key_path}_file: give either {name}_file or {name}_credential, not both")
                continue
            needed = required and not (section == "imap" and entry.auth == "xoauth2")
            if not from_file and not from_cred:
                if needed:
                    problems.append(f"{key_path}_file: required ({name}_file or {name}_credential)")
                continue
            kind, value = ("file", from_file) if from_file else ("credential", from_cred)
            secret = _read_secret(value, kind, key_path, base, problems)
            if secret is not None:
                config.secrets[key_path] = secret


# --------------------------------------------------------------------------- entry points


def default_instance_id(control_socket: str) -> str:
    """``<hostname>:<hash of the control socket path>``, or ``<hostname>:<pid>`` without a socket.

    Stable across restarts, so a restarted daemon takes back the jobs its
    consumers held (they are named after it) instead of leaving them to the
    reclaim timer; unique per host, because only one daemon can serve a given
    control socket (a second one refuses to start).
    """
    host = socket.gethostname()
    if not control_socket:
        return f"{host}:{os.getpid()}"
    return f"{host}:{hashlib.sha1(control_socket.encode()).hexdigest()[:8]}"


def default_config_path() -> str:
    """``$INBOUNDD_CONFIG`` if set, else ``/etc/inboundd.toml``."""
    return os.environ.get("INBOUNDD_CONFIG") or DEFAULT_PATH


def load_text(text: str, source: str = "<string>", base: Path | None = None) -> Config:
    """Parse and validate configuration *text*; relative secret paths resolve against *base*.

    Raises :class:`ConfigError` listing every problem found.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"invalid TOML: {exc}"]) from None
    problems: list[str] = []
    config = _convert_section(Config, data, "", problems)
    if config is not None:
        assert isinstance(config, Config)
        config.source = source
        base = base or Path.cwd()
        if config.control.socket and not os.path.isabs(config.control.socket):
            # Like secret files, a relative socket path is relative to the config file.
            config.control.socket = str(base / config.control.socket)
        if not config.daemon.instance_id:
            config.daemon.instance_id = default_instance_id(config.control.socket)
        _load_secrets(config, base, problems)
    if problems or config is None:
        raise ConfigError(source, problems)
    return config


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the configuration file at *path* (default: :func:`default_config_path`).

    Raises :class:`ConfigError` (with every problem) when the file is missing,
    unreadable or invalid.
    """
    file = Path(path if path is not None else default_config_path())
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(file), [f"cannot read configuration file: {exc.strerror or exc}"]) from None
    return load_text(text, source=str(file), base=file.resolve().parent)
