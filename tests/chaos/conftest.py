"""The chaos suite's recorder: each chaos test adds one row to the Reliability table.

How to add a row (any test under tests/chaos/)::

    from chaos.reliability import Row

    def test_something(reliability) -> None:
        ...                                   # inject faults, measure
        reliability.add(Row(scenario="PostgreSQL frozen", faults="1 freeze of 10 s", messages=200,
                            lost=len(missing), duplicated=len(twice), dead_lettered=dead,
                            worst_recovery=worst, recovery_means="fault end → last message stored"))
        assert not missing and not twice ...  # assert AFTER adding: a failing run shows its figures

The row records what was measured, whatever the test then decides; the
recorder fills in the test's outcome (passed/failed). At the end of any run
that added rows, the table is printed in Markdown (terminal summary) and
written to ``$INBOUNDD_RELIABILITY_TABLE`` if set, else to
``reliability.md`` in the run's pytest base temp directory (the summary
names the file). ``scripts/test tests/chaos`` reproduces the README's table.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterator

import pytest

from chaos.reliability import Row, markdown

_ROWS = pytest.StashKey[list[tuple[str, Row]]]()
_OUTCOMES = pytest.StashKey[dict[str, str]]()
_TABLE_PATH = pytest.StashKey[Path]()


class Recorder:
    """The ``reliability`` fixture: :meth:`add` a :class:`~chaos.reliability.Row` for the table."""

    def __init__(self, rows: list[tuple[str, Row]], nodeid: str) -> None:
        self._rows = rows
        self._nodeid = nodeid

    def add(self, row: Row) -> None:
        """Record *row* (printed at the end of the run with this test's outcome)."""
        self._rows.append((self._nodeid, row))
        print(f"\nreliability: {row}")


@pytest.fixture
def reliability(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorder]:
    """Adds rows to the run's Reliability table (see this module's docstring)."""
    config = request.config
    config.stash.setdefault(_TABLE_PATH, Path(os.environ.get("INBOUNDD_RELIABILITY_TABLE")
                                              or tmp_path_factory.getbasetemp() / "reliability.md"))
    yield Recorder(config.stash.setdefault(_ROWS, []), request.node.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    report = yield
    outcomes = item.config.stash.setdefault(_OUTCOMES, {})
    if report.failed or (report.when == "call" and item.nodeid not in outcomes):
        outcomes[item.nodeid] = "failed" if report.failed else report.outcome
    return report


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(_ROWS, [])
    if not rows:
        return
    outcomes = config.stash.get(_OUTCOMES, {})
    table = markdown([dataclasses.replace(row, result=outcomes.get(nodeid, "not finished"))
                      for nodeid, row in rows])
    path = config.stash[_TABLE_PATH]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table)
    terminalreporter.write_sep("=", "Reliability")
    terminalreporter.write(table)
    terminalreporter.write_line(f"(written to {path})")
