"""One table printer: one line per row, cut with … to the terminal width; ps --format fields checked."""

from __future__ import annotations

import pytest

from capsa.cli.jobs import check_format
from capsa.cli.output import print_table, truncate
from capsa.errors import InvalidArgument


def test_rows_stay_one_line_and_fit_the_width(capsys: pytest.CaptureFixture[str]) -> None:
    command = "python3 -c 'import time\nwhile True: time.sleep(1)' " + "x" * 200
    print_table(["JOB ID", "COMMAND", "NAME"], [("0123456789ab", command, "web"),
                                                ("sha256:" + "f" * 64, "true", "db")], width=60)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert all(len(line) <= 60 for line in lines)
    assert lines[1].startswith("0123456789ab") and "…" in lines[1] and lines[1].rstrip().endswith("web")


def test_without_a_width_nothing_is_cut(capsys: pytest.CaptureFixture[str]) -> None:
    print_table(["A", "B"], [("x" * 300, "tab\there")], width=None)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "x" * 300 in lines[1] and "tab here" in lines[1]


def test_truncate_counts_wide_characters() -> None:
    assert truncate("abcdef", 4) == "abc…"
    assert truncate("abc", 3) == "abc"
    assert truncate("日本語テキスト", 6) == "日本…"


def test_format_fields_are_checked() -> None:
    assert check_format("{id} {state} {exit_code}") == "{id} {state} {exit_code}"
    for bad in ("{nope}", "{id!r}", "{id:>5}", "{"):
        with pytest.raises(InvalidArgument):
            check_format(bad)
