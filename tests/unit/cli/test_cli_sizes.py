"""One size formatter for every table: decimal for stored things, binary for memory and IO."""

from __future__ import annotations

import pytest

from capsa.cli.output import format_size


@pytest.mark.parametrize(("n", "binary", "text"), [
    (0, False, "0B"), (999, False, "999B"), (1000, False, "1.0kB"), (1_500_000, False, "1.5MB"),
    (3 * 10**12, False, "3.0TB"), (5 * 10**15, False, "5000.0TB"),
    (1023, True, "1023B"), (1024, True, "1.0KiB"), (64 << 20, True, "64.0MiB"), (None, True, "-"),
])
def test_sizes_read_as_docker_prints_them(n: float | None, binary: bool, text: str) -> None:
    assert format_size(n, binary=binary) == text
