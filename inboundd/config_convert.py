"""How TOML values become typed, validated configuration sections: the conversion machinery.

The schema (what the keys are) lives elsewhere: the core sections in
``config_schema.py``, each provider's ``[[name]]`` section in its package;
``config.py`` assembles them from the provider registry. This module knows
no key; it knows how to read any :class:`Section`:

* **Values**: :data:`Duration` (``"30s"``, ``"5m"``, ``"1h30m"``, ``"250ms"``
  or seconds) and :data:`Size` (``"10MiB"``, ``"512KB"`` or bytes); every
  other type is converted strictly by msgspec.
* **Every problem at once**: :func:`convert_section` never stops at the first
  problem; each lands in a list as ``"key.path: what was expected"``
  (``imap[1].port``), unknown keys with a did-you-mean, and a section whose
  keys converted runs its own cross-field ``check``.
* **Secrets are declared on their fields**: a ``<name>_file`` key annotated
  with :meth:`SecretKey.file` names a file holding the secret, its twin
  ``<name>_credential`` (:meth:`SecretKey.credential`) a systemd credential
  read from ``$CREDENTIALS_DIRECTORY``. :func:`load_secrets` reads them at
  load time (a missing file is a configuration error) into :class:`Secret`,
  whose ``repr`` never shows the value.
* **Renamed keys keep working**: a key annotated with :class:`Renamed` is
  also read under its old name, with a warning (``warnings``) instead of an
  error, and problems name the key as it was written.
* **The schema describes itself**: :func:`schema_keys` lists every key with
  its type, default, required-ness, secret-ness and documentation (from
  ``msgspec.Meta(description=...)``), for generated documentation and tests.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "INTERNAL",
    "ConfigError",
    "Duration",
    "KeyInfo",
    "Renamed",
    "Secret",
    "SecretKey",
    "Section",
    "Size",
    "convert_section",
    "load_secrets",
    "parse_duration",
    "parse_size",
    "schema_keys",
]


# --------------------------------------------------------------------------- values


class _DurationMarker:
    """Annotation marker: the value is a duration string (or number of seconds)."""


class _SizeMarker:
    """Annotation marker: the value is a size string (or number of bytes)."""


class _InternalMarker:
    """Annotation marker: a field filled by the loader, not a key of the file."""


#: Seconds as float, written in the file as ``"30s"``, ``"5m"``, ``"1h30m"``, ``"250ms"`` or a number.
Duration = Annotated[float, _DurationMarker]
#: Bytes as int, written in the file as ``"10MiB"``, ``"512KB"``, ``"1G"`` or a number.
Size = Annotated[int, _SizeMarker]
#: Marks a field of a section that is not a key of the file (``Annotated[str, INTERNAL]``).
INTERNAL = _InternalMarker

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


class SecretKey:
    """Annotation marker of a key that names where a secret comes from (``Annotated[str, SecretKey.file()]``).

    The secret's name is the key without its ``_file``/``_credential``
    suffix; the two keys of one secret are twins, at most one may be given.
    *required*: one of the twins must be given (a section may relax that
    with :meth:`Section.secret_needed`).
    """

    __slots__ = ("via", "required")

    def __init__(self, via: Literal["file", "credential"], required: bool) -> None:
        self.via = via
        self.required = required

    @classmethod
    def file(cls, *, required: bool = False) -> "SecretKey":
        """``<name>_file``: a path whose contents are the secret (relative to the configuration file)."""
        return cls("file", required)

    @classmethod
    def credential(cls, *, required: bool = False) -> "SecretKey":
        """``<name>_credential``: the name of a systemd credential (``LoadCredential=``)."""
        return cls("credential", required)

    def __repr__(self) -> str:
        return f"SecretKey.{self.via}(required={self.required})"


class Renamed:
    """Annotation marker of a key that had another name: the old one still works, with a deprecation warning."""

    __slots__ = ("old",)

    def __init__(self, old: str) -> None:
        self.old = old

    def __repr__(self) -> str:
        return f"Renamed({self.old!r})"


# --------------------------------------------------------------------------- sections


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A table of the configuration file: its fields are its keys (see the module docstring)."""

    def check(self, path: str, problems: list[str]) -> None:
        """Cross-field validation; append ``"path: message"`` lines to *problems*."""

    def secret_needed(self, name: str, required: bool) -> bool:
        """Whether secret *name* must be given here (*required*: as its keys declare)."""
        return required


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {line}" for line in problems))


def _extras(annotation: Any) -> tuple[Any, ...]:
    return typing.get_args(annotation)[1:] if typing.get_origin(annotation) is Annotated else ()


def _marker(annotation: Any) -> type | None:
    for extra in _extras(annotation):
        if extra in (_DurationMarker, _SizeMarker):
            return extra
    return None


def _secret_key(annotation: Any) -> SecretKey | None:
    return next((extra for extra in _extras(annotation) if isinstance(extra, SecretKey)), None)


def _renamed(annotation: Any) -> str | None:
    return next((extra.old for extra in _extras(annotation) if isinstance(extra, Renamed)), None)


def _internal(annotation: Any) -> bool:
    return _InternalMarker in _extras(annotation)


def _struct_type(annotation: Any) -> type[Section] | None:
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    return None


def _list_item_struct(annotation: Any) -> type[Section] | None:
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return _struct_type(item)
    return None


def _describe(value: object) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a float"}.get(type(value), type(value).__name__)


def _keys(cls: type[Section]) -> tuple[dict[str, Any], list[msgspec.structs.FieldInfo]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return hints, [f for f in msgspec.structs.fields(cls) if not _internal(hints[f.name])]


# --------------------------------------------------------------------------- conversion


def convert_section(
    cls: type[Section], data: object, path: str, problems: list[str], *, reserved: Mapping[str, str] | None = None,
    warnings: list[str] | None = None,
) -> Section | None:
    """Convert the table *data* at key *path* (``""``: the top level) into *cls*.

    Appends every problem to *problems* (and every deprecation to
    *warnings*); returns None when a key of this section (or of a section
    inside it) had one. *reserved* maps keys of this table that are known
    but refused to the line that says why.
    """
    where = path or "top level"
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a table, got {_describe(data)}")
        return None
    hints, fields = _keys(cls)
    names = [f.name for f in fields]
    required = {f.name for f in fields if f.required}
    prefix = f"{path}." if path else ""
    data, written_as = _old_names(hints, names, data, prefix, problems, warnings)
    for key in data:
        if reserved and key in reserved:
            problems.append(f"{key}: {reserved[key]}")
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
            values[name] = convert_section(_struct_type(hints[name]), {}, key_path, problems, warnings=warnings)
            continue
        if name not in data:
            if name in required:
                problems.append(f"{key_path}: required key is missing")
                ok = False
            continue
        before = len(problems)
        value = _convert_value(hints[name], data[name], written_as.get(key_path, key_path), problems, warnings)
        if len(problems) > before:
            ok = False
        else:
            values[name] = value
    if not ok:
        return None
    section = cls(**values)
    before = len(problems)
    section.check(path, problems)
    for index in range(before, len(problems)):  # name a renamed key as it was written
        for new, old in written_as.items():
            if problems[index].startswith(f"{new}:"):
                problems[index] = old + problems[index][len(new):]
    return section


def _old_names(
    hints: dict[str, Any], names: list[str], data: dict[str, Any], prefix: str, problems: list[str],
    warnings: list[str] | None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """*data* with renamed keys under their new names, and new key path → old key path for those."""
    written_as: dict[str, str] = {}
    for name in names:
        old = _renamed(hints[name])
        if old is None or old not in data:
            continue
        if name in data:
            problems.append(f"{prefix}{old}: renamed to {name}, which is given too: keep only {name}")
            data = {key: value for key, value in data.items() if key != old}
            continue
        data = {(name if key == old else key): value for key, value in data.items()}
        written_as[f"{prefix}{name}"] = f"{prefix}{old}"
        if warnings is not None:
            warnings.append(f"{prefix}{old}: renamed to {name}; the old name still works for now")
    return data, written_as


def _convert_value(annotation: Any, value: object, path: str, problems: list[str],
                   warnings: list[str] | None = None) -> Any:
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
        return convert_section(struct, value, path, problems, warnings=warnings)
    item_struct = _list_item_struct(annotation)
    if item_struct is not None:
        if not isinstance(value, list):
            problems.append(f"{path}: expected an array of tables ([[{path}]]), got {_describe(value)}")
            return None
        return [convert_section(item_struct, item, f"{path}[{i}]", problems, warnings=warnings)
                for i, item in enumerate(value)]
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


def _sections(section: Section, path: str) -> Iterator[tuple[str, Section]]:
    """*section* and every section inside it, depth first, in field order, with their key paths."""
    yield path, section
    hints, fields = _keys(type(section))
    prefix = f"{path}." if path else ""
    for field in fields:
        value = getattr(section, field.name)
        if _struct_type(hints[field.name]) is not None and value is not None:
            yield from _sections(value, f"{prefix}{field.name}")
        elif _list_item_struct(hints[field.name]) is not None:
            for index, item in enumerate(value or []):
                if item is not None:
                    yield from _sections(item, f"{prefix}{field.name}[{index}]")


def _secret_names(cls: type[Section]) -> dict[str, bool]:
    """Secrets declared on the keys of *cls*: name → required, in field order."""
    hints, fields = _keys(cls)
    names: dict[str, bool] = {}
    for field in fields:
        key = _secret_key(hints[field.name])
        if key is not None:
            name = field.name.removesuffix(f"_{key.via}")
            names[name] = names.get(name, False) or key.required
    return names


def load_secrets(config: Section, base: Path, problems: list[str]) -> dict[str, Secret]:
    """Read every secret named in *config* (relative files against *base*); key path → secret.

    A key path is the section's path plus the secret's name (``imap[0].password``).
    Appends a problem for both twins given, a required secret missing, a
    credential without ``$CREDENTIALS_DIRECTORY``, an unreadable or empty file.
    """
    secrets: dict[str, Secret] = {}
    for path, section in _sections(config, ""):
        for name, required in _secret_names(type(section)).items():
            key_path = f"{path}.{name}" if path else name
            from_file = getattr(section, f"{name}_file", "")
            from_cred = getattr(section, f"{name}_credential", "")
            if from_file and from_cred:
                problems.append(f"{key_path}_file: give either {name}_file or {name}_credential, not both")
                continue
            if not from_file and not from_cred:
                if section.secret_needed(name, required):
                    problems.append(f"{key_path}_file: required ({name}_file or {name}_credential)")
                continue
            kind, value = ("file", from_file) if from_file else ("credential", from_cred)
            secret = _read_secret(value, kind, key_path, base, problems)
            if secret is not None:
                secrets[key_path] = secret
    return secrets


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


# --------------------------------------------------------------------------- the schema, described


class KeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One key of the schema, as documentation needs it."""

    #: ``daemon.consumers``, ``imap[].host`` (``[]``: one per table of an array of tables).
    path: str
    #: ``duration``, ``size``, ``integer``, ``string``, ``boolean``, ``float``, ``array of strings``,
    #: ``one of "a", "b"``, ``table``, ``array of tables``.
    kind: str
    required: bool
    #: The default value as the file would spell it (None when required, or for tables).
    default: Any = None
    doc: str = ""
    #: ``file`` or ``credential`` for a key naming where a secret comes from.
    secret: str | None = None
    #: The key's former name, still accepted with a warning.
    renamed_from: str | None = None


def _kind(annotation: Any) -> str:
    marker = _marker(annotation)
    if marker is _DurationMarker:
        return "duration"
    if marker is _SizeMarker:
        return "size"
    bare = typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation
    if typing.get_origin(bare) is Literal:
        return "one of " + ", ".join(f'"{value}"' for value in typing.get_args(bare))
    if typing.get_origin(bare) is list:
        (item,) = typing.get_args(bare)
        return "array of tables" if _struct_type(item) else f"array of {_kind(item)}s"
    if _struct_type(bare):
        return "table"
    return {str: "string", int: "integer", float: "float", bool: "boolean"}.get(bare, str(bare))


def _doc(annotation: Any) -> str:
    return next((extra.description for extra in _extras(annotation)
                 if isinstance(extra, msgspec.Meta) and extra.description), "")


def schema_keys(cls: type[Section], path: str = "") -> Iterator[KeyInfo]:
    """Every key of *cls* and of the sections inside it, in field order (tables before their keys)."""
    hints, fields = _keys(cls)
    prefix = f"{path}." if path else ""
    for field in fields:
        annotation = hints[field.name]
        key_path = f"{prefix}{field.name}"
        secret = _secret_key(annotation)
        kind = _kind(annotation)
        default: Any = None
        if not field.required and kind not in ("table", "array of tables"):
            default = field.default if field.default is not msgspec.NODEFAULT else field.default_factory()
        yield KeyInfo(path=key_path, kind=kind, required=field.required, default=default, doc=_doc(annotation),
                      secret=secret.via if secret else None, renamed_from=_renamed(annotation))
        if _struct_type(annotation):
            yield from schema_keys(_struct_type(annotation), key_path)  # type: ignore[arg-type]
        elif _list_item_struct(annotation):
            yield from schema_keys(_list_item_struct(annotation), f"{key_path}[]")  # type: ignore[arg-type]
