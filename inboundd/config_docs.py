"""The configuration's documentation, generated from its schema: inboundd.toml(5) and the annotated example.

The schema is the single source of every key's name, type, default,
required-ness and documentation (``config_schema.py``, and each provider's
``[[name]]`` section in its package, found through the registry): a key is
documented where it is declared, with :func:`~inboundd.config_convert.doc`,
and a table with its ``about``. This module renders that into
``man/inboundd.toml.5`` (mdoc) and ``etc/inboundd.toml`` (the annotated
example: every key with its default, the account tables commented out);
``scripts/gen-config-docs`` writes both files, and a test fails when either
differs from what this module makes. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .config import config_type
from .config_convert import KeyInfo, format_duration, format_size, schema_keys, toml_value
from .providers import REGISTRY, Registry

__all__ = ["Table", "render_example", "render_manual", "spelled", "tables"]

#: Date of the manual page (``.Dd``); move it when the page's text changes meaningfully.
MANUAL_DATE = "November 28, 2026"
#: Width of the annotated example's comment lines.
WIDTH = 78


@dataclass
class Table:
    """One table of the file with its keys: ``[daemon]``, or ``[[imap]]`` (*array*: one per account)."""

    name: str
    array: bool
    about: str
    keys: list[KeyInfo] = field(default_factory=list)


def tables(registry: Registry = REGISTRY) -> list[Table]:
    """The tables of *registry*'s configuration, in file order, each with its keys."""
    found: list[Table] = []
    for key in schema_keys(config_type(registry)):
        if "." not in key.path:
            found.append(Table(key.path, key.kind == "array of tables", key.about))
        else:
            found[-1].keys.append(key)
    return found


def spelled(key: KeyInfo, value: Any) -> str:
    """*value* of *key* as the file spells it (a duration as ``"30s"``, a size as ``"50MiB"``)."""
    if key.kind == "duration" and isinstance(value, (int, float)):
        return toml_value(format_duration(value))
    if key.kind == "size" and isinstance(value, int):
        return toml_value(format_size(value))
    return toml_value(value)


def _name(key: KeyInfo) -> str:
    """The key as written inside its table: ``consumers``, or dotted in a table within it (``match.tenant``)."""
    return key.path.split(".", 1)[1]


def _twin(key: KeyInfo) -> str:
    """The other key of a secret (``password_file`` ↔ ``password_credential``)."""
    name = _name(key)
    return name.removesuffix("_file") + "_credential" if key.secret == "file" else \
        name.removesuffix("_credential") + "_file"


def _facts(key: KeyInfo, *, typed: bool = True) -> list[str]:
    """What the generator says of a key besides its own text: type and default, or that it is required.

    Without *typed* (the annotated example, whose value line shows the
    default) only what the value line cannot show.
    """
    kind = key.kind[0].upper() + key.kind[1:]
    if key.required:
        facts = [f"{kind}; required." if typed else "Required."]
    elif key.secret_required:
        facts = [f"{kind}; required unless {_twin(key)} is given." if typed else
                 f"Required unless {_twin(key)} is given."]
    else:
        facts = [f"{kind}; default {spelled(key, key.default)}."] if typed else []
    if key.renamed_from:
        facts.append(f"Formerly {key.renamed_from} (still accepted, with a warning).")
    return facts


def _paragraphs(text: str) -> Iterator[tuple[bool, list[str]]]:
    """*text* (an ``about``) as (verbatim?, lines): prose folded into one line, two-space indented lines kept."""
    for block in re.split(r"\n\s*\n", text.strip("\n")):
        prose: list[str] = []
        for line in block.splitlines():
            if line.startswith("  "):
                if prose:
                    yield False, [" ".join(" ".join(prose).split())]
                    prose = []
                yield True, [line[2:]]
            else:
                prose.append(line)
        if prose:
            yield False, [" ".join(" ".join(prose).split())]


# --------------------------------------------------------------------------- the annotated example

EXAMPLE_PREAMBLE = """\
# inboundd configuration — the annotated example.
#
# Generated from the schema by scripts/gen-config-docs: every key with its
# default and meaning (inboundd.toml(5) says the same). Durations are written
# "250ms", "30s", "5m", "1h30m" (or a number of seconds); sizes "512KB",
# "10MiB", "1GiB" (or a number of bytes). Unknown keys are errors.
# Secrets never live in this file: give a *_file (a path, relative to this
# file's directory unless absolute) or a *_credential (a systemd credential
# name, read from $CREDENTIALS_DIRECTORY; see LoadCredential= in the unit).
#
# Validate with:  inboundd --check-config -c /etc/inboundd.toml
# The systemd unit starts the daemon only once an account is configured below
# (inboundd --is-configured); until then the installed service stays stopped.
"""


def _comment(text: str, prefix: str = "# ") -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        if current and len(prefix) + len(current) + 1 + len(word) > WIDTH:
            lines.append(prefix + current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        lines.append(prefix + current)
    return lines


def render_example(registry: Registry = REGISTRY) -> str:
    """``etc/inboundd.toml``: every table and key with its documentation; account tables commented out."""
    out = [EXAMPLE_PREAMBLE.rstrip("\n")]
    for table in tables(registry):
        out.append("")
        about: list[str] = []
        for verbatim, lines in _paragraphs(table.about):
            about += [f"#   {line}" for line in lines] if verbatim else _comment(lines[0])
        if table.array:
            out += about + ["# Uncomment and edit:", f"#[[{table.name}]]"]
        else:
            out += about + [f"[{table.name}]"]
        mark = "#" if table.array else ""
        for key in table.keys:
            if key.kind == "table":  # its keys follow, dotted (match.tenant = …)
                out += _comment(key.doc)
                continue
            out += _comment(" ".join([key.doc, *_facts(key, typed=False)]))
            value = key.example if key.example is not None else key.default
            out.append(f"{mark}{_name(key)} = {spelled(key, value)}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the manual page

MANUAL_HEAD = r""".\" Generated from the configuration schema by scripts/gen-config-docs; edit the schema, not this file.
.Dd {date}
.Dt INBOUNDD.TOML 5
.Os
.Sh NAME
.Nm inboundd.toml
.Nd configuration file of the inboundd email ingestion daemon
.Sh SYNOPSIS
.Pa /etc/inboundd.toml
.Sh DESCRIPTION
.Xr inboundd 8
and
.Xr inboundctl 8
read one TOML file: the one given with
.Fl c ,
else
.Ev INBOUNDD_CONFIG ,
else
.Pa /etc/inboundd.toml .
Unknown keys, wrong types and bad values are errors; every problem is
reported at once with the file and the key path, for example
.Ql imap[1].port ,
and what was expected.
Files the daemon reads (secrets, CA bundles) are checked when the file is
loaded.
.Pp
Durations are written
.Ql 250ms ,
.Ql 30s ,
.Ql 5m ,
.Ql 1h30m
or
.Ql 1d
(or a number of seconds); sizes
.Ql 512KB ,
.Ql 10MiB ,
.Ql 1GiB
(or a number of bytes).
A path is relative to the configuration file's directory unless absolute.
.Pp
Secrets never live in the file.
A key ending in
.Ql _file
names a file holding the secret; a key ending in
.Ql _credential
names a systemd credential, read from
.Ev CREDENTIALS_DIRECTORY
(see
.Cm LoadCredential=
in
.Xr systemd.exec 5 ) .
At most one of the two may be given.
Secrets are never logged or printed.
.Pp
On
.Dv SIGHUP
the daemon re-reads the file: the
.Ic daemon
section's log settings and consumer count, the accounts
({accounts})
and the
.Ic [[deliver]]
targets apply at once (Python handlers are imported again); changes to the
other sections are logged as needing a restart.
An invalid file is rejected and the daemon keeps its running configuration.
.Pp
The annotated example,
.Pa etc/inboundd.toml
in the source tree, lists every key below with its default.
Each key is shown with its type, and its default or that it is required.
"""

MANUAL_TAIL = r""".Sh FILES
.Bl -tag -width Ds
.It Pa /etc/inboundd.toml
the default configuration file
.El
.Sh EXAMPLES
A minimal file with one IMAP account:
.Bd -literal -offset indent
[redis]
url = "redis://127.0.0.1:6379/0"

[postgres]
dsn = "postgresql://inboundd@db.example.com/inboundd"

[[imap]]
id = "support"
host = "imap.example.com"
username = "support@example.com"
password_file = "/etc/inboundd/support.password"
.Ed
.Pp
Check a file before reloading:
.Dl inboundd --check-config -c /etc/inboundd.toml && systemctl reload inboundd
.Sh SEE ALSO
.Xr systemd.exec 5 ,
.Xr inboundctl 8 ,
.Xr inboundd 8
"""


def _roff(text: str) -> str:
    """*text* safe as an mdoc text line (a backslash, a leading dot or quote)."""
    text = text.replace("\\", "\\e")
    return "\\&" + text if text.startswith((".", "'")) else text


def _sentences(text: str) -> list[str]:
    """One sentence per line (mdoc's rule), each line at most about 78 characters (broken at spaces)."""
    lines: list[str] = []
    for sentence in re.split(r"(?<=[.;:])\s+(?=[A-Z(\"])", text):
        lines += [_roff(line) for line in _comment(sentence, prefix="")]
    return lines


def _about(text: str) -> list[str]:
    out: list[str] = []
    for verbatim, lines in _paragraphs(text):
        if verbatim:
            out += [".Bd -literal -offset indent", *(_roff(line) for line in lines), ".Ed"]
        else:
            if out and not out[-1].startswith(".Ed"):
                out.append(".Pp")
            out += _sentences(lines[0])
    return out


def render_manual(registry: Registry = REGISTRY) -> str:
    """``man/inboundd.toml.5``: the description, then every table and key, from the schema."""
    accounts = ", ".join(f"[[{provider.name}]]" for provider in registry)
    out = [MANUAL_HEAD.replace("{date}", MANUAL_DATE).replace("{accounts}", accounts).rstrip("\n")]
    out.append(".Sh KEYS")
    for table in tables(registry):
        out.append(".Ss " + ("Bq Bq" if table.array else "Bq") + " Ic " + table.name)
        out += _about(table.about)
        out.append(".Bl -tag -width Ds")
        for key in table.keys:
            out.append(f".It Ic {_name(key)}")
            if key.kind == "table":
                out += _sentences(f"{key.doc} Table.")
                continue
            out += _sentences(key.doc)
            out += _sentences(" ".join(_facts(key)))
        out.append(".El")
    out.append(MANUAL_TAIL.rstrip("\n"))
    return "\n".join(out) + "\n"
