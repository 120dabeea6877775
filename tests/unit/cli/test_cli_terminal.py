"""The client's detach-key parsing and scanning (capsa.cli.terminal)."""

from __future__ import annotations

import pytest

from capsa.cli.terminal import DetachScanner, parse_detach_keys
from capsa.errors import InvalidArgument


def test_detach_keys_use_dockers_syntax() -> None:
    assert parse_detach_keys("ctrl-p,ctrl-q") == b"\x10\x11"
    assert parse_detach_keys("ctrl-a,d") == b"\x01d"
    assert parse_detach_keys("ctrl-@,ctrl-]") == b"\x00\x1d"
    assert parse_detach_keys("") == b""
    for bad in ("ctrl-1", "ctrl-pq", "alt-x", "p,,q"):
        with pytest.raises(InvalidArgument):
            parse_detach_keys(bad)


def test_the_sequence_detaches_even_split_across_reads() -> None:
    s = DetachScanner(b"\x10\x11")
    assert s.feed(b"ls\x10") == (b"ls", False)    # a lone Ctrl-P is held back until decided
    assert s.feed(b"\x11rest") == (b"", True)


def test_a_partial_sequence_is_passed_on_once_it_is_not_the_sequence() -> None:
    s = DetachScanner(b"\x10\x11")
    assert s.feed(b"\x10x") == (b"\x10x", False)
    assert s.feed(b"\x10\x10\x11") == (b"\x10", True)


def test_no_keys_never_detach() -> None:
    assert DetachScanner(b"").feed(b"\x10\x11") == (b"\x10\x11", False)
