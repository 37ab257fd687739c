"""bash completion for inboundctl (completion/inboundctl) completes what inboundctl's parser accepts."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import pytest

from inboundd.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "completion" / "inboundctl"


def complete(*words: str, cwd: Path | None = None) -> list[str]:
    """What bash offers for the command line *words* (the last word is the one being typed)."""
    bash = shutil.which("bash")
    assert bash, "bash not found"
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in ("inboundctl", *words))
    program = (f"source '{SCRIPT}'\nCOMP_WORDS=({quoted})\nCOMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n"
               "_inboundctl\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    result = subprocess.run([bash, "--norc", "-c", program], capture_output=True, text=True, timeout=30, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("inboundctl has no commands")


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_commands_are_the_parsers() -> None:
    assert sorted(complete("")) == sorted(_subparsers(build_parser()))
    assert complete("dr") == ["drain"]


def test_global_options_are_the_parsers() -> None:
    assert set(complete("-")) == _options(build_parser())


@pytest.mark.parametrize("command", sorted(_subparsers(build_parser())))
def test_each_commands_options_are_the_parsers(command: str) -> None:
    assert set(complete(command, "-")) == _options(_subparsers(build_parser())[command])


def test_the_command_is_found_after_a_config_option() -> None:
    assert set(complete("-c", "/etc/inboundd.toml", "dlq", "--")) == {"--account", "--limit", "--json", "--config",
                                                                       "--help"}


def test_config_completes_file_names(tmp_path: Path) -> None:
    (tmp_path / "inboundd.toml").write_text("")
    (tmp_path / "other.txt").write_text("")
    assert complete("status", "--config", "inb", cwd=tmp_path) == ["inboundd.toml"]


def test_values_and_job_ids_get_no_guesses() -> None:
    assert complete("drain", "--timeout", "") == []
    assert complete("redrive", "") == []
    assert complete("redrive", "--d") == ["--dry-run"]
