"""The man pages lint clean and stay in step with --help and etc/inboundd.toml."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
PAGES = sorted(p for p in MAN.iterdir() if re.fullmatch(r".+\.[1-9]", p.name))


def _ours(reference: str) -> bool:
    """Whether ``Xr name section`` names a page shipped in man/ (mandoc only knows installed pages)."""
    match = re.fullmatch(r"Xr (\S+) (\d)", reference)
    return bool(match) and (MAN / f"{match.group(1)}.{match.group(2)}").exists()


def lint(page: Path) -> list[str]:
    """mandoc's complaints about *page* at every level (style included), minus cross-references to our own pages."""
    mandoc = shutil.which("mandoc")
    if mandoc is None:
        pytest.fail("mandoc is not installed (Debian package mandoc)")
    result = subprocess.run([mandoc, "-Tlint", "-W", "style", str(page)], capture_output=True, text=True,
                            timeout=60)
    problems = []
    for line in (result.stdout + result.stderr).splitlines():
        if f"{page}:" not in line:
            continue  # notes about the system's own mandoc.db, not about this page
        found = re.search(r"referenced manual not found: (Xr \S+ \d)", line)
        if found and _ours(found.group(1)):
            continue
        problems.append(line)
    return problems


def test_the_expected_pages_exist() -> None:
    assert {p.name for p in PAGES} >= {"inboundd.8", "inboundctl.8", "inboundd.toml.5"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_lints_clean(page: Path) -> None:
    problems = lint(page)
    assert not problems, f"mandoc -Tlint -W style {page.name}:\n" + "\n".join(problems)


def test_lint_catches_a_broken_page(tmp_path: Path) -> None:
    broken = tmp_path / "broken.8"
    broken.write_text(".Dd November 23, 2026\n.Dt BROKEN 8\n.Os\n.Sh NAME\n.Nm broken\n.Nd x\n"
                      ".Sh DESCRIPTION\n.Bl -tag\n.It foo\nbar \n")
    problems = lint(broken)
    assert any("WARNING" in p or "ERROR" in p for p in problems), problems


# --------------------------------------------------------------------------- inboundd.toml.5


def _documented_keys(page: str) -> dict[str, dict[str, list[str]]]:
    """Per ``.Ss`` table of the page, its keys (``.It Ic``), each with the text lines below it."""
    keys: dict[str, dict[str, list[str]]] = {}
    section = key = None
    for line in page.splitlines():
        header = re.match(r"^\.Ss (?:Bq )+Ic ([a-z_]+)$", line)
        if header:
            section, key = header.group(1), None
            continue
        if line.startswith(".Sh "):
            section = key = None
        item = re.match(r"^\.It Ic ([a-z_.]+)$", line)  # dotted: a key of a table inside the table
        if item and section:
            key = item.group(1)
            keys.setdefault(section, {})[key] = []
        elif line == ".El":
            key = None
        elif key and section:
            keys[section][key].append(line)
    return keys


def test_every_key_of_the_schema_is_in_the_config_page_with_its_type_and_default() -> None:
    from inboundd import config
    from inboundd.config_convert import schema_keys
    from inboundd.config_docs import spelled

    documented = _documented_keys((MAN / "inboundd.toml.5").read_text())
    declared = [key for key in schema_keys(config.Config) if "." in key.path]
    assert {key.path.split(".")[0].removesuffix("[]") for key in declared} == set(documented)
    for key in declared:
        section, name = key.path.split(".", 1)[0].removesuffix("[]"), key.path.split(".", 1)[1]
        assert name in documented[section], f"{key.path} is missing from man/inboundd.toml.5"
        text = " ".join(documented[section][name]).replace("\\e", "\\")
        assert key.doc and key.doc.split()[0] in text, f"{key.path}: its text is not in the page"
        if key.kind == "table":  # a table inside the table: its keys follow, each with its default
            assert text.endswith("Table."), key.path
            continue
        facts = text.count("; default ") + text.count("; required")
        assert facts == 1, f"{key.path}: expected one default or required, found {facts} in {text!r}"
        if key.required or key.secret_required:
            assert "; required" in text, f"{key.path} is required but the page gives a default"
        else:
            assert f"; default {spelled(key, key.default)}." in text, key.path
        assert "See the previous entry" not in text


def test_config_docs_are_what_the_generator_makes() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-config-docs"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_generator_notices_a_stale_page(tmp_path: Path) -> None:
    import shutil as sh

    copy = tmp_path / "repo"
    for part in ("scripts", "inboundd", "man", "etc"):
        sh.copytree(ROOT / part, copy / part, ignore=sh.ignore_patterns("__pycache__"))
    page = copy / "man" / "inboundd.toml.5"
    page.write_text(page.read_text().replace("Number of queue consumer tasks", "How many consumers"))
    script = copy / "scripts" / "gen-config-docs"
    stale = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60)
    assert stale.returncode == 1 and "man/inboundd.toml.5: stale" in stale.stderr
    fixed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert fixed.returncode == 0 and page.read_text() == (MAN / "inboundd.toml.5").read_text()


# --------------------------------------------------------------------------- --help vs pages


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _long_options(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings
            if opt.startswith("--") and opt != "--help"}


def test_every_inboundctl_command_and_option_is_in_its_page() -> None:
    from inboundd import cli

    page = (MAN / "inboundctl.8").read_text()
    parser = cli.build_parser()
    help_text = parser.format_help()
    commands = _subcommands(parser)
    assert set(commands) == set(cli.COMMANDS)
    synopsis = page.split(".Sh SYNOPSIS", 1)[1].split(".Sh DESCRIPTION", 1)[0]
    for name, sub in commands.items():
        assert re.search(rf"^\s+{name}\s", help_text, re.M), f"{name} missing from --help"
        assert f".Cm {name}\n" in synopsis, f"{name} missing from the SYNOPSIS of inboundctl.8"
        assert re.search(rf"^\.It Cm {name}\b", page, re.M), f"{name} is not described in inboundctl.8"
        for option in _long_options(sub):
            assert f"Fl {option[1:]}" in page, f"inboundctl {name} {option} is not in inboundctl.8"
        for example in sub.epilog.split("examples:", 1)[1].strip().splitlines():
            assert example.strip() in page, f"example {example.strip()!r} of {name} is not in inboundctl.8"
    for option in _long_options(parser):
        assert f"Fl {option[1:]}" in page, option
    for code in (cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_NOT_RUNNING, cli.EXIT_UNAVAILABLE):
        assert f".It {code}\n" in page.split(".Sh EXIT STATUS", 1)[1], f"exit status {code} undocumented"


def test_every_inboundd_option_is_in_its_page() -> None:
    from inboundd import daemon

    page = (MAN / "inboundd.8").read_text()
    for option in _long_options(daemon.build_parser()):
        assert f"Fl {option[1:]}" in page, f"inboundd {option} is not in inboundd.8"


def test_inboundd_trial_and_its_options_are_in_the_page_and_in_inboundd_help() -> None:
    from inboundd import daemon
    from inboundd.trial import runner

    page = (MAN / "inboundd.8").read_text()
    synopsis = page.split(".Sh SYNOPSIS", 1)[1].split(".Sh DESCRIPTION", 1)[0]
    assert ".Cm trial\n" in synopsis
    trial_section = page.split(".Sh TRIAL", 1)[1].split("\n.Sh ", 1)[0]
    for option in _long_options(runner.build_parser()):
        assert f"Fl {option[1:]}" in synopsis and f".It Fl {option[1:]}" in trial_section, option
    for port in runner.TRIAL_PORTS.values():
        assert str(port) in trial_section
    assert "inboundd trial" in daemon.build_parser().format_help()


def test_metrics_named_in_inboundd_8_exist() -> None:
    from inboundd import metrics

    exposed = set()
    for family in metrics.REGISTRY.collect():
        exposed.add(family.name)
        if family.type == "counter":
            exposed.add(family.name + "_total")
    named = set(re.findall(r"\b(inboundd_[a-z_]*[a-z])\b", (MAN / "inboundd.8").read_text()))
    assert len(named) >= 10
    assert named <= exposed, f"inboundd.8 names metrics that do not exist: {sorted(named - exposed)}"
