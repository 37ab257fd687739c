"""How TOML values become typed, validated configuration sections: the conversion machinery.

The schema (what the keys are) lives elsewhere: the core sections in
``config_schema.py``, each provider's ``[[name]]`` section in its package;
``config.py`` assembles them from the provider registry. This module knows
no key; it knows how to read any :class:`Section`:

* **Values**: :data:`Duration` (``"30s"``, ``"5m"``, ``"1h30m"``, ``"250ms"``
  or seconds) and :data:`Size` (``"10MiB"``, ``"512KB"`` or bytes); every
  other type is converted strictly by msgspec.
* **Every problem at once**: :func:`convert_section` never stops at the first
  problem; each lands in a list as ``"key.path: expected …, got …"``
  (``imap[1].port``; an enum lists its values), unknown keys with a
  did-you-mean. A key that had a problem holds a stand-in (its default) so
  that the section's cross-field ``check``, the secrets and the files are
  still checked in the same pass; :func:`drop_echoes` leaves out what would
  only repeat a problem already reported.
* **Files are checked when loaded**: a key annotated :data:`ReadableFile`
  (a CA bundle, a token file) is made absolute against the configuration
  file's directory and must be readable (:func:`check_files`).
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
import functools
import math
import os
import re
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal

import msgspec

__all__ = [
    "INTERNAL",
    "ConfigError",
    "Duration",
    "KeyInfo",
    "Renamed",
    "Secret",
    "SecretKey",
    "ReadableFile",
    "Section",
    "Size",
    "check_files",
    "convert_section",
    "doc",
    "drop_echoes",
    "format_duration",
    "format_size",
    "load_secrets",
    "parse_duration",
    "parse_size",
    "schema_keys",
    "toml_value",
]


# --------------------------------------------------------------------------- values


class _DurationMarker:
    """Annotation marker: the value is a duration string (or number of seconds)."""


class _SizeMarker:
    """Annotation marker: the value is a size string (or number of bytes)."""


class _InternalMarker:
    """Annotation marker: a field filled by the loader, not a key of the file."""


class _ReadableFileMarker:
    """Annotation marker: the value names a file the daemon reads (checked at load time)."""


#: Seconds as float, written in the file as ``"30s"``, ``"5m"``, ``"1h30m"``, ``"250ms"`` or a number.
Duration = Annotated[float, _DurationMarker]
#: Bytes as int, written in the file as ``"10MiB"``, ``"512KB"``, ``"1G"`` or a number.
Size = Annotated[int, _SizeMarker]
#: A path to a file the daemon reads (a CA bundle, a token file); ``""`` means none. At load time
#: a relative path is made absolute against the configuration file's directory, and a file that
#: cannot be read is a configuration error (:func:`check_files`).
ReadableFile = Annotated[str, _ReadableFileMarker]
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
    """Parse ``"30s"``, ``"5m"``, ``"1h30m"``, ``"250ms"`` or a finite non-negative number into seconds.

    Raises ``ValueError`` with a message saying what was expected.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like \"30s\", got {value!r}")
    if isinstance(value, (int, float)):
        seconds = _as_float(value)
        if not math.isfinite(seconds):
            raise ValueError(f"expected a finite duration, got {_number_shown(value)}")
        if seconds < 0:
            raise ValueError(f"expected a non-negative duration, got {value!r}")
        return seconds
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
    if not math.isfinite(total):
        raise ValueError(f"expected a finite duration, got {value[:40]!r}… (too large)")
    return total


def parse_size(value: object) -> int:
    """Parse ``"10MiB"``, ``"512KB"``, ``"1G"`` or a non-negative integer into bytes.

    Raises ``ValueError`` with a message saying what was expected.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size like \"10MiB\", got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a non-negative size, got {_number_shown(value)}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size like \"10MiB\", got {type(value).__name__}")
    match = _SIZE_RE.fullmatch(value.strip().lower())
    if not match or match.group(2) not in _SIZE_UNITS:
        raise ValueError(f"expected a size like \"10MiB\", \"512KB\" or \"1GiB\", got {value!r}")
    size = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if not math.isfinite(size):
        raise ValueError(f"expected a size like \"10MiB\", got {value[:40]!r}… (too large)")
    return int(size)


def _as_float(value: int | float) -> float:
    """*value* as a float; an integer too large for one is infinity (TOML integers have no bound here)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _number_shown(value: int | float) -> str:
    """*value* for a message: an integer of hundreds of digits is described, not printed."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    return repr(value)


def format_duration(seconds: float) -> str:
    """*seconds* as the file spells a duration: ``"250ms"``, ``"2.5s"``, ``"30s"``, ``"25m"``, ``"1h30m"``.

    ``parse_duration(format_duration(x)) == x`` for every whole number of milliseconds.
    """
    millis = round(seconds * 1000)
    if millis % 1000:
        return f"{millis}ms" if millis < 1000 else f"{millis / 1000:g}s"
    hours, rest = divmod(millis // 1000, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return text or "0s"


def format_size(size: int) -> str | int:
    """*size* bytes as the file spells a size: ``"50MiB"``, ``"512KB"``, or the number of bytes."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024), ("GB", 1000**3), ("MB", 1000**2),
                         ("KB", 1000)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return size


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

    #: What the table is for, as the manual and the annotated example say it before its keys. A line
    #: indented by two spaces is shown verbatim (commands); a blank line separates paragraphs.
    about: ClassVar[str] = ""

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
    if typing.get_origin(annotation) is Annotated:  # a table with its documentation
        annotation = typing.get_args(annotation)[0]
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


@functools.cache
def _keys(cls: type[Section]) -> tuple[Mapping[str, Any], tuple[msgspec.structs.FieldInfo, ...]]:
    # Cached: evaluating the string annotations is most of what loading a configuration costs
    # (~5 ms per section, ~90 ms per file); a section's keys never change once it is defined.
    hints = typing.get_type_hints(cls, include_extras=True)
    return MappingProxyType(hints), tuple(f for f in msgspec.structs.fields(cls) if not _internal(hints[f.name]))


# --------------------------------------------------------------------------- conversion


def convert_section(
    cls: type[Section], data: object, path: str, problems: list[str], *, reserved: Mapping[str, str] | None = None,
    warnings: list[str] | None = None,
) -> Section:
    """Convert the table *data* at key *path* (``""``: the top level) into *cls*.

    Appends every problem to *problems* (and every deprecation to
    *warnings*), and always returns a section: when a key had a problem,
    the section is *provisional* (that key holds its default, or an empty
    value when it has none) so that everything else can still be checked in
    the same pass: the section's own ``check`` runs anyway, its lines about
    a key already reported (or naming one) left out. The caller decides by
    *problems*, never by the result, whether the configuration is valid.
    *reserved* maps keys of this table that are known but refused to the
    line that says why.
    """
    where = path or "top level"
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a table, got {_describe(data)}")
        return _provisional(cls, path)
    hints, fields = _keys(cls)
    names = [f.name for f in fields]
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
    failed: list[str] = []  # keys whose own value is unusable (a section with problems inside is still usable)
    for field in fields:
        name, key_path = field.name, f"{prefix}{field.name}"
        if name not in data and _struct_type(hints[name]) is not None:
            # An absent section still gets its defaults validated and derived.
            values[name] = convert_section(_struct_type(hints[name]), {}, key_path, problems, warnings=warnings)
        elif name not in data:
            if field.required:
                problems.append(f"{key_path}: required key is missing")
                values[name] = _stand_in(field, hints[name], key_path)
                failed.append(name)
        else:
            value = _convert_value(hints[name], data[name], written_as.get(key_path, key_path), problems, warnings)
            if value is _FAILED:
                values[name] = _stand_in(field, hints[name], key_path)
                failed.append(name)
            else:
                values[name] = value
    section = cls(**values)
    before = len(problems)
    try:
        section.check(path, problems)
    except Exception:
        if not failed:
            raise
        del problems[before:]  # a check tripped over a stand-in value: what it found so far is unreliable
    drop_echoes(problems, before, mentioning=failed)
    for index in range(before, len(problems)):  # name a renamed key as it was written
        for new, old in written_as.items():
            if problems[index].startswith(f"{new}:"):
                problems[index] = old + problems[index][len(new):]
    return section


#: What :func:`_convert_value` returns for a value it could not convert (its problem is in the list).
_FAILED: Any = object()


def _problem_path(problem: str) -> str:
    return problem.split(": ", 1)[0]


def drop_echoes(problems: list[str], start: int, *, mentioning: Sequence[str] = ()) -> None:
    """Remove the lines from *start* on that repeat a problem already reported before *start*.

    A line repeats one when its key is a key already reported, or inside one
    (``imap[2]`` reported: ``imap[2].id`` is left out), or when its message
    names one of the keys *mentioning* (the section's keys that hold
    stand-in values: a check comparing against them says nothing true).
    Used after every check that runs on a provisional configuration.
    """
    reported = {_problem_path(line) for line in problems[:start]}
    named = re.compile(r"\b(" + "|".join(map(re.escape, mentioning)) + r")\b") if mentioning else None

    def echo(line: str) -> bool:
        key, _, message = line.partition(": ")
        if any(key == bad or key.startswith((f"{bad}.", f"{bad}[")) for bad in reported):
            return True
        return bool(named and named.search(message))

    problems[start:] = [line for line in problems[start:] if not echo(line)]


def _provisional(cls: type[Section], path: str) -> Section:
    """*cls* with its defaults (and stand-ins for its required keys), for a table that was not one."""
    return convert_section(cls, {}, path, [])


def _stand_in(field: msgspec.structs.FieldInfo, annotation: Any, path: str) -> Any:
    """A value of the right type for a key whose own value is unusable: its default, else an empty one."""
    if field.default is not msgspec.NODEFAULT:
        return field.default
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    if _struct_type(annotation) is not None:
        return _provisional(_struct_type(annotation), path)  # type: ignore[arg-type]
    marker = _marker(annotation)
    if marker is not None:
        return 0.0 if marker is _DurationMarker else 0
    bare = typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation
    if typing.get_origin(bare) is Literal:
        return typing.get_args(bare)[0]
    origin = typing.get_origin(bare) or bare
    return {str: "", int: 0, float: 0.0, bool: False, list: [], dict: {}}.get(origin)


def _old_names(
    hints: Mapping[str, Any], names: list[str], data: dict[str, Any], prefix: str, problems: list[str],
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
    """*value* converted to *annotation*, or :data:`_FAILED` with the problem appended."""
    marker = _marker(annotation)
    try:
        if marker is _DurationMarker:
            return parse_duration(value)
        if marker is _SizeMarker:
            return parse_size(value)
    except ValueError as exc:
        problems.append(f"{path}: {exc}")
        return _FAILED
    struct = _struct_type(annotation)
    if struct is not None:
        return convert_section(struct, value, path, problems, warnings=warnings)
    item_struct = _list_item_struct(annotation)
    if item_struct is not None:
        if not isinstance(value, list):
            problems.append(f"{path}: expected an array of tables ([[{path}]]), got {_describe(value)}")
            return _FAILED
        return [convert_section(item_struct, item, f"{path}[{i}]", problems, warnings=warnings)
                for i, item in enumerate(value)]
    choices = _choices(annotation)
    if choices and value not in choices:
        problems.append(f"{path}: expected one of {', '.join(toml_value(c) for c in choices)}, got {_shown(value)}")
        return _FAILED
    try:
        return msgspec.convert(value, annotation, strict=True)
    except msgspec.ValidationError as exc:
        problems.append(f"{path}: {_validation_message(str(exc), annotation, value, path)}")
        return _FAILED


def _choices(annotation: Any) -> tuple[Any, ...]:
    bare = typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation
    return typing.get_args(bare) if typing.get_origin(bare) is Literal else ()


def toml_value(value: Any) -> str:
    """*value* (a string, number, boolean or array of them) as a TOML file spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return repr(value)


def _shown(value: object) -> str:
    """*value* in a problem line: as the file spells it, or what kind of value it is when that is long."""
    if isinstance(value, (dict, list)):
        return _describe(value)
    return toml_value(value) if isinstance(value, bool) else repr(value)


_EXPECTED_WHAT = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
                  "array": "an array", "object": "a table"}


def _validation_message(message: str, annotation: Any, value: object, path: str) -> str:
    """msgspec's *message* said the way the other problems are (``expected …, got …``)."""
    nested = re.search(r"\s*- at `\$(.*)`$", message)
    if nested:  # an item of an array: name it by its own key path
        message = message[: nested.start()]
        path_note = f" (at {path}{nested.group(1)})"
    else:
        path_note = ""
    found = re.fullmatch(r"Expected `(\w+)`(.*?)(?:, got `\w+`)?", message)
    if found is None:
        return f"{message}{path_note}"
    what = _EXPECTED_WHAT.get(found.group(1), found.group(1))
    got = "" if nested else f", got {_shown(value)}"
    return f"expected {what}{found.group(2)}{got}{path_note}"


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


def _reported(problems: Sequence[str], key_path: str) -> bool:
    """Whether a problem was already reported about *key_path* or a key inside it."""
    return any(_problem_path(line) == key_path or _problem_path(line).startswith((f"{key_path}.", f"{key_path}["))
               for line in problems)


def load_secrets(config: Section, base: Path, problems: list[str]) -> dict[str, Secret]:
    """Read every secret named in *config* (relative files against *base*); key path → secret.

    A key path is the section's path plus the secret's name (``imap[0].password``).
    Appends a problem for both twins given, a required secret missing, a
    credential without ``$CREDENTIALS_DIRECTORY``, an unreadable or empty file.
    Works on a provisional configuration too (see :func:`convert_section`):
    a secret key already reported is not read, and whether a secret is
    required is only judged in a section without problems (it may depend on
    a key that has one, like ``auth``).
    """
    secrets: dict[str, Secret] = {}
    for path, section in _sections(config, ""):
        prefix = f"{path}." if path else ""
        clean = not path or not _reported(problems, path)
        for name, required in _secret_names(type(section)).items():
            key_path = f"{prefix}{name}"
            if _reported(problems, f"{key_path}_file") or _reported(problems, f"{key_path}_credential"):
                continue
            from_file = getattr(section, f"{name}_file", "")
            from_cred = getattr(section, f"{name}_credential", "")
            if from_file and from_cred:
                problems.append(f"{key_path}_file: give either {name}_file or {name}_credential, not both")
                continue
            if not from_file and not from_cred:
                if clean and section.secret_needed(name, required):
                    problems.append(f"{key_path}_file: required ({name}_file or {name}_credential)")
                continue
            kind, value = ("file", from_file) if from_file else ("credential", from_cred)
            secret = _read_secret(value, kind, key_path, base, problems)
            if secret is not None:
                secrets[key_path] = secret
    return secrets


def check_files(config: Section, base: Path, problems: list[str]) -> None:
    """Resolve every :data:`ReadableFile` key of *config* against *base* and check the file can be read.

    Each key becomes an absolute path (so what is checked now is what is
    opened later, whatever the working directory); a file that cannot be
    opened for reading is a problem naming the key, the path and why.
    """
    for path, section in _sections(config, ""):
        hints, fields = _keys(type(section))
        prefix = f"{path}." if path else ""
        for field in fields:
            value = getattr(section, field.name)
            if not (_ReadableFileMarker in _extras(hints[field.name]) and value):
                continue
            key_path = f"{prefix}{field.name}"
            if _reported(problems, key_path):
                continue
            if "\x00" in value:
                problems.append(f"{key_path}: a path cannot contain a NUL character, got {value[:80]!r}")
                continue
            file = Path(value) if os.path.isabs(value) else base / value
            setattr(section, field.name, str(file))
            try:
                with open(file, "rb"):
                    pass
            except OSError as exc:
                problems.append(f"{key_path}: cannot read {str(file)!r}: {exc.strerror or exc}")


def _read_secret(path_or_name: str, kind: str, key_path: str, base: Path, problems: list[str]) -> Secret | None:
    if "\x00" in path_or_name:
        problems.append(f"{key_path}_{kind}: a file name cannot contain a NUL character, got {path_or_name[:80]!r}")
        return None
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
    except UnicodeDecodeError as exc:
        problems.append(f"{key_path}_{kind}: secret file {str(file)!r} is not UTF-8 text "
                        f"({exc.reason} at byte {exc.start})")
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
    #: ``duration``, ``size``, ``integer``, ``string``, ``path``, ``boolean``, ``float``,
    #: ``array of strings``, ``one of "a", "b"``, ``table``, ``array of tables``.
    kind: str
    required: bool
    #: The default value as the section holds it (seconds for a duration; None when required, or for tables).
    default: Any = None
    doc: str = ""
    #: The value the annotated example shows instead of the default (``examples=[…]`` of :func:`doc`).
    example: Any = None
    #: For a table: what it is for (:attr:`Section.about`).
    about: str = ""
    #: ``file`` or ``credential`` for a key naming where a secret comes from.
    secret: str | None = None
    #: Whether one of the secret's two keys must be given (a section may relax it, see ``secret_needed``).
    secret_required: bool = False
    #: The key's former name, still accepted with a warning.
    renamed_from: str | None = None


def _kind(annotation: Any) -> str:
    if _ReadableFileMarker in _extras(annotation):
        return "path"
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


def doc(text: str, **constraints: Any) -> msgspec.Meta:
    """The documentation of a key, and its constraints (``ge=1``, ``pattern=…``, ``examples=[…]``).

    *text* is one or more sentences, as the manual and the annotated example
    print them (white space is folded). ``examples`` holds the value the
    annotated example shows for a key without a default (``id``, ``host``).
    """
    return msgspec.Meta(description=" ".join(text.split()), **constraints)


def _doc_of(annotation: Any) -> str:
    return next((extra.description for extra in _extras(annotation)
                 if isinstance(extra, msgspec.Meta) and extra.description), "")


def _example_of(annotation: Any) -> Any:
    return next((extra.examples[0] for extra in _extras(annotation)
                 if isinstance(extra, msgspec.Meta) and extra.examples), None)


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
        table = _struct_type(annotation) or _list_item_struct(annotation)
        yield KeyInfo(path=key_path, kind=kind, required=field.required, default=default, doc=_doc_of(annotation),
                      example=_example_of(annotation), about=table.about if table else "",
                      secret=secret.via if secret else None, secret_required=bool(secret and secret.required),
                      renamed_from=_renamed(annotation))
        if _struct_type(annotation):
            yield from schema_keys(_struct_type(annotation), key_path)  # type: ignore[arg-type]
        elif _list_item_struct(annotation):
            yield from schema_keys(_list_item_struct(annotation), f"{key_path}[]")  # type: ignore[arg-type]
