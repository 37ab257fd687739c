"""The Reliability table's rendering and the tally of the store (pure)."""

from __future__ import annotations

from chaos.reliability import COLUMNS, Row, markdown


def test_rows_become_a_markdown_table_with_each_recovery_time_defined_below_it() -> None:
    rows = [Row("20 SIGKILLs", "20 × SIGKILL + restart", 2000, 0, 0, 0, 3.04, "last restart → last message stored",
                result="passed"),
            Row("a | b", "none", 10, 1, 2, 3)]
    lines = markdown(rows).splitlines()
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |"
    assert lines[1].count("|") == len(COLUMNS) + 1
    assert lines[2] == "| 20 SIGKILLs | 20 × SIGKILL + restart | 2000 | 0 | 0 | 0 | 3.0 s | passed |"
    assert lines[3] == "| a \\| b | none | 10 | 1 | 2 | 3 | — | not finished |"
    assert lines[4:] == ["", "* 20 SIGKILLs: worst recovery = last restart → last message stored"]


def test_an_empty_run_is_just_the_header() -> None:
    assert len(markdown([]).splitlines()) == 2


def test_the_tally_names_lost_duplicated_and_unexpected_messages() -> None:
    from chaos.mailflow import tally

    result = tally(["a", "b", "c", "d"], ["a", "b", "b", "d", "x"])
    assert (result.expected, result.stored) == (4, 5)
    assert result.lost == {"c"} and result.duplicated == {"b"} and result.unexpected == {"x"}
    assert not tally(["a"], ["a"]).lost | tally(["a"], ["a"]).duplicated
