"""The one configuration loader: TOML file → typed, validated :class:`Config`.

The configuration is the daemon's own sections (``config_schema.py``) plus one
``[[name]]`` array of tables per provider in the registry
(``inboundd.providers``), each of that provider's own type; account ids are
unique across all of them. Loading never stops at the first problem: every
unknown key, wrong type, bad duration or size, failed cross-field check,
missing secret and unreadable file is collected in one pass and reported
together as a :class:`ConfigError`, each line naming the file and the key
path (``imap[1].port``) and what was expected (``config_convert.py`` does
the converting).

Secrets never live in the TOML file itself. A secret is given either as
``*_file`` (a path whose contents are the secret) or as ``*_credential`` (the
name of a systemd credential, read from ``$CREDENTIALS_DIRECTORY``). They are
read at load time, so a missing file is a configuration error, and they are
wrapped in :class:`Secret`, whose ``repr`` never shows the value.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import tomllib
from pathlib import Path

import msgspec

from .config_convert import (
    ConfigError,
    Secret,
    check_files,
    convert_section,
    load_secrets,
    parse_duration,
    parse_size,
)
from .config_schema import (
    ControlConfig,
    CoreConfig,
    DaemonConfig,
    HttpConfig,
    PostgresConfig,
    ProcessingConfig,
    QueueConfig,
    RedisConfig,
    StoreConfig,
)
from .providers import REGISTRY, Registry

__all__ = [
    "Config",
    "ConfigError",
    "ControlConfig",
    "CoreConfig",
    "DaemonConfig",
    "HttpConfig",
    "PostgresConfig",
    "ProcessingConfig",
    "QueueConfig",
    "RedisConfig",
    "Secret",
    "StoreConfig",
    "config_type",
    "default_config_path",
    "default_instance_id",
    "load",
    "load_text",
    "parse_duration",
    "parse_size",
]

DEFAULT_PATH = "/etc/inboundd.toml"


def config_type(registry: Registry = REGISTRY) -> type[CoreConfig]:
    """The configuration type of *registry*: the core sections and a ``[[name]]`` list per provider."""
    return _compose(tuple((provider.name, provider.account_config) for provider in registry))


@functools.cache
def _compose(accounts: tuple[tuple[str, type], ...]) -> type[CoreConfig]:
    return msgspec.defstruct(
        "Config",
        [(name, list[section], msgspec.field(default_factory=list)) for name, section in accounts],
        bases=(CoreConfig,), module=__name__, kw_only=True, forbid_unknown_fields=True,
    )


#: The configuration of this build's providers (the type :func:`load` returns).
Config = config_type()


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


def load_text(text: str, source: str = "<string>", base: Path | None = None, *,
              registry: Registry = REGISTRY) -> CoreConfig:
    """Parse and validate configuration *text*; relative secret paths resolve against *base*.

    The ``[[name]]`` sections are those of *registry*'s providers; a section
    of a provider the registry plans but this build lacks is named as such.
    Raises :class:`ConfigError` listing every problem found; deprecations
    (a renamed key used by its old name) are in the result's ``warnings``.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"invalid TOML: {exc}"]) from None
    except ValueError as exc:
        # tomllib lets int() refuse an integer of thousands of digits with a bare ValueError.
        raise ConfigError(source, [f"invalid TOML: a number tomllib cannot read ({str(exc).split(';')[0]})"]) from None
    except RecursionError:
        raise ConfigError(source, ["invalid TOML: arrays or tables nested too deeply"]) from None
    problems: list[str] = []
    warnings: list[str] = []
    config = convert_section(config_type(registry), data, "", problems, reserved=registry.planned,
                             warnings=warnings)
    # Everything below runs even when a key had a problem, so that one pass
    # reports every problem: files that cannot be read included.
    assert isinstance(config, CoreConfig)
    config.source = source
    config.warnings = warnings
    base = base or Path.cwd()
    if config.control.socket and not os.path.isabs(config.control.socket):
        # Like secret files, a relative socket path is relative to the config file.
        config.control.socket = str(base / config.control.socket)
    if not config.daemon.instance_id:
        config.daemon.instance_id = default_instance_id(config.control.socket)
    check_files(config, base, problems)
    config.secrets.update(load_secrets(config, base, problems))
    for provider in registry:
        if provider.check is not None and provider.accounts(config):
            provider.check(config, problems)
    if problems:
        raise ConfigError(source, problems)
    return config


def load(path: str | os.PathLike[str] | None = None, *, registry: Registry = REGISTRY) -> CoreConfig:
    """Load the configuration file at *path* (default: :func:`default_config_path`).

    Raises :class:`ConfigError` (with every problem) when the file is missing,
    unreadable or invalid.
    """
    file = Path(path if path is not None else default_config_path())
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(file), [f"cannot read configuration file: {exc.strerror or exc}"]) from None
    return load_text(text, source=str(file), base=file.resolve().parent, registry=registry)
