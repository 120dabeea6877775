"""One place that prints results: tables for people, JSON for scripts (``--json``)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table

__all__ = ["ago", "emit", "json_option", "key_values", "print_table"]

_console = Console(highlight=False, soft_wrap=True)


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(fn)


def emit(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*[str(c) for c in row])
    _console.print(table)


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
