"""The Reliability table: one row per chaos scenario, rendered as Markdown (pure, no I/O).

Rows are collected by the ``reliability`` fixture (tests/chaos/conftest.py)
and printed at the end of the run; README.md's "Reliability" section quotes
the table of a full run.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["COLUMNS", "Row", "markdown"]

COLUMNS = ("Scenario", "Faults injected", "Messages", "Lost", "Duplicated", "Dead-lettered", "Worst recovery",
           "Result")


@dataclass(frozen=True)
class Row:
    """What one chaos test measured.

    *worst_recovery* is in seconds (None when the scenario has no recovery
    to time); *recovery_means* says what was timed, from which moment to
    which (printed below the table, so a figure never stands without its
    definition). *result* is the test's outcome, filled in by the recorder.
    """

    scenario: str
    faults: str
    messages: int
    lost: int
    duplicated: int
    dead_lettered: int
    worst_recovery: float | None = None
    recovery_means: str = ""
    result: str = "not finished"

    def cells(self) -> tuple[str, ...]:
        recovery = "—" if self.worst_recovery is None else f"{self.worst_recovery:.1f} s"
        return (self.scenario, self.faults, str(self.messages), str(self.lost), str(self.duplicated),
                str(self.dead_lettered), recovery, self.result)


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[Row]) -> str:
    """The Markdown table of *rows* in the order given, then one line per row saying what its recovery time measures."""
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" if i < 2 else "--:" for i in range(len(COLUMNS) - 1)) + "|---|"]
    lines += ["| " + " | ".join(_escape(c) for c in row.cells()) + " |" for row in rows]
    notes = [f"* {row.scenario}: worst recovery = {row.recovery_means}" for row in rows if row.recovery_means]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"
