"""requirements.lock (what the Debian package's venv installs) matches pyproject.toml.

A dependency added to or changed in pyproject.toml without ``scripts/lock``
fails here, in a second, rather than only in the package build.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
#: The interpreter the lock is resolved for: Debian 12's python3 (scripts/lock).
TARGET = {"python_version": "3.11", "python_full_version": "3.11.2", "sys_platform": "linux",
          "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "platform_machine": "x86_64"}


def parse_lock(text: str) -> dict[str, tuple[Version, list[str]]]:
    """``{name: (version, hashes)}`` from a hashed requirements file."""
    pins: dict[str, tuple[Version, list[str]]] = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", entry)
        if match:
            pins[canonicalize_name(match.group(1))] = (Version(match.group(2)),
                                                       re.findall(r"--hash=(sha256:[0-9a-f]{64})", entry))
    return pins


def unmet(requirements: list[str], pins: dict[str, tuple[Version, list[str]]]) -> list[str]:
    """The requirements (for the target interpreter) that the pins do not satisfy."""
    problems = []
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(TARGET):
            continue
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{line}: not in requirements.lock")
        elif not requirement.specifier.contains(pins[name][0], prereleases=True):
            problems.append(f"{line}: requirements.lock pins {pins[name][0]}")
    return problems


PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PINS = parse_lock((ROOT / "requirements.lock").read_text())


def test_every_dependency_and_the_build_backend_is_pinned() -> None:
    wanted = PYPROJECT["project"]["dependencies"] + PYPROJECT["build-system"]["requires"]
    problems = unmet(wanted, PINS)
    assert not problems, "run scripts/lock and commit requirements.lock:\n" + "\n".join(problems)


def test_every_pin_carries_hashes() -> None:
    assert PINS
    assert not [name for name, (_, hashes) in PINS.items() if not hashes]


def test_a_stale_lock_is_caught() -> None:
    pins = parse_lock("trio==0.20.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    assert unmet(["trio>=0.27", "redis>=5"], pins) == ["trio>=0.27: requirements.lock pins 0.20.0",
                                                       "redis>=5: not in requirements.lock"]
