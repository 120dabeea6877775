"""One place that prints results: tables for people, JSON for scripts (``--json``).

Tables are laid out here rather than by rich: importing rich's console and table
costs more than a whole ``capsa ps`` round trip. The layout is the one rich drew
(columns padded to their widest cell, two spaces apart, bold header on a terminal).
Every row stays one line, as Docker's tables do: line breaks in a cell become spaces, and
when the table is wider than the terminal the widest columns are cut with ``…`` until it fits.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import click

__all__ = ["ago", "emit", "format_size", "json_option", "key_values", "print_table", "table_width", "truncate"]


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(fn)


def emit(data: Any) -> None:
    import json  # here: a table needs no json module, and ps/run answer faster without it

    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def _width(text: str) -> int:
    """Terminal cells of ``text``: East Asian wide and fullwidth characters take two."""
    if text.isascii():
        return len(text)
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def truncate(text: str, width: int) -> str:
    """``text`` in at most ``width`` terminal cells, ending in ``…`` when cut."""
    if _width(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        w = _width(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def table_width() -> int | None:
    """Cells a table may use: the terminal's width on a terminal (or $COLUMNS), else unlimited (pipes)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.stdout.isatty():
        import shutil

        return shutil.get_terminal_size().columns
    return None


_MIN_CELL = 8   # a cut column keeps at least this much (or its header), so it stays recognisable


def _fit(widths: list[int], floors: list[int], limit: int) -> list[int]:
    """Narrow the widest columns, one cell at a time, until the row fits ``limit`` (or nothing can give)."""
    widths = list(widths)
    excess = sum(widths) + 2 * (len(widths) - 1) - limit
    while excess > 0:
        give = [i for i in range(len(widths)) if widths[i] > floors[i]]
        if not give:
            break
        widest = max(give, key=lambda i: widths[i])
        widths[widest] -= 1
        excess -= 1
    return widths


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, width: int | None = -1) -> None:
    """``width``: cells per line (default :func:`table_width`; None never cuts)."""
    limit = table_width() if width == -1 else width
    cells = [[str(c) for c in columns],
             *[[" ".join(str(c).split()) if any(ch in str(c) for ch in "\n\r\t") else str(c) for c in row]
               for row in rows]]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(columns))]
    if limit is not None:
        floors = [min(w, max(_MIN_CELL, _width(h))) for w, h in zip(widths, cells[0], strict=True)]
        widths = _fit(widths, floors, limit)
        cells = [[truncate(cell, w) for cell, w in zip(row, widths, strict=True)] for row in cells]

    def line(row: list[str]) -> str:
        return "  ".join(cell + " " * (width - _width(cell)) for cell, width in zip(row, widths, strict=True))

    header = line(cells[0])
    if sys.stdout.isatty() and "NO_COLOR" not in os.environ:
        header = f"\x1b[1m{header}\x1b[0m"
    out = [header, *(line(row) for row in cells[1:])]
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()


def ago(ns: int) -> str:
    if not ns:
        return "-"
    seconds = max(0.0, time.time() - ns / 1e9)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def key_values(pairs: Sequence[str], flag: str) -> dict[str, str]:
    """``KEY=VALUE`` arguments of a repeatable flag, with a one-line error naming the flag."""
    from capsa.errors import InvalidArgument

    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"{flag} {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


def format_size(n: float | None, *, binary: bool = False) -> str:
    """Sizes as Docker prints them: decimal units (kB, MB) for stored things, binary (KiB, MiB) for
    memory and IO counters (``binary=True``); ``-`` when unknown."""
    if n is None:
        return "-"
    base, units = (1024, ("B", "KiB", "MiB", "GiB", "TiB")) if binary else (1000, ("B", "kB", "MB", "GB", "TB"))
    value = float(n)
    for unit in units:
        if abs(value) < base or unit == units[-1]:
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= base
    raise AssertionError("unreachable")
