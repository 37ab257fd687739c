"""docs/ stays a true map: every file it names exists, and every module of inboundd is on the map."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "inboundd"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _named_paths(text: str) -> set[str]:
    """Backquoted names that look like files or directories of the repository (``queue/``, ``store/db.py``)."""
    return {name for name in re.findall(r"`([A-Za-z0-9_./-]+)`", text)
            if name.endswith((".py", ".md", ".sql", "/")) or name.startswith(("tests/", "docs/", "scripts/"))}


def _exists(name: str) -> bool:
    """*name* relative to the repository, to the package, or to one of the package's directories."""
    bases = [ROOT, PACKAGE, *(path for path in PACKAGE.rglob("*") if path.is_dir() and path.name != "__pycache__")]
    return any((base / name).exists() for base in bases)


def test_every_file_the_architecture_names_exists() -> None:
    missing = sorted(name for name in _named_paths(ARCHITECTURE.read_text()) if not _exists(name))
    assert not missing, f"docs/architecture.md names what does not exist: {missing}"


def test_every_module_and_package_of_inboundd_is_on_the_map() -> None:
    text = ARCHITECTURE.read_text()
    parts = [path for path in PACKAGE.iterdir() if path.name != "__pycache__"
             and (path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists()))]
    parts += [path for path in (PACKAGE / "providers").iterdir() if (path / "__init__.py").exists()]
    unmapped = sorted(path.name for path in parts if path.name not in ("__init__.py", "__main__.py")
                      and f"`{path.name}`" not in text and f"`{path.name}/`" not in text)
    assert not unmapped, f"docs/architecture.md does not say where these live: {unmapped}"


def test_the_readme_points_into_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/architecture.md" in readme and "docs/applications.md" in readme
    assert "../" not in readme, "the README points outside the repository"
