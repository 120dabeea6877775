"""Limits: validated, charged against a shared budget, and named in every refusal."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from capsa.errors import LimitExceeded
from capsa.images.unpack import UnpackBudget, UnpackLimits, apply_layer
from capsa.images.unpack._limits import Guard
from tests.integration.images.unpack.unpack_tarwriter import TarWriter


@pytest.mark.parametrize("field", ["max_file_bytes", "max_total_bytes", "max_entries", "max_path_bytes",
                                   "max_name_bytes", "max_header_bytes", "timeout_s"])
def test_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        UnpackLimits(**{field: 0})


def test_defaults_follow_the_adr() -> None:
    limits = UnpackLimits()
    assert (limits.max_file_bytes, limits.max_total_bytes, limits.max_entries, limits.timeout_s) == (
        1 << 30, 10 << 30, 100_000, 1800.0)
    assert not limits.allow_devices


def test_guard_names_entry_and_limit() -> None:
    guard = Guard(UnpackLimits(max_file_bytes=10, max_total_bytes=15, max_entries=1), UnpackBudget())
    guard.charge_entry("'a'")
    with pytest.raises(LimitExceeded, match="'b': more than max_entries=1") as info:
        guard.charge_entry("'b'")
    assert info.value.detail == {"limit": "max_entries", "entry": "'b'"}
    with pytest.raises(LimitExceeded, match="'big': file of 11 bytes exceeds max_file_bytes=10"):
        guard.charge_data("'big'", 11, is_file=True)
    guard.charge_data("'ok'", 10, is_file=True)
    with pytest.raises(LimitExceeded, match="max_total_bytes=15"):
        guard.charge_data("'more'", 6, is_file=True)
    assert not LimitExceeded("x").retryable  # a hostile layer is never retried


def test_an_oversized_file_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    # the header claims 1 TiB and no data follows: the claim alone must be enough
    tar = TarWriter().header("huge", size=1 << 40).end()
    with pytest.raises(LimitExceeded, match="'huge'"):
        apply_layer(io.BytesIO(tar), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_clock_runs_across_layers(tmp_path: Path) -> None:
    budget = UnpackBudget(started=time.monotonic() - 100)
    with pytest.raises(LimitExceeded, match="timeout_s=50"):
        apply_layer(io.BytesIO(TarWriter().file("a").end()), tmp_path, budget=budget,
                    limits=UnpackLimits(timeout_s=50))


class _Trickle(io.RawIOBase):
    """A slow, non-seekable source: 512 bytes per read, 5 ms each."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        time.sleep(0.005)
        out, self._data = self._data[:512], self._data[512:]
        return out


def test_the_timeout_interrupts_a_long_layer(tmp_path: Path) -> None:
    tar = TarWriter()
    for i in range(300):
        tar.file(f"f{i}", "x")
    with pytest.raises(LimitExceeded, match="timeout_s=0.2"):
        apply_layer(_Trickle(tar.end()), tmp_path, limits=UnpackLimits(timeout_s=0.2))  # type: ignore[arg-type]
    assert 0 < len(list(tmp_path.iterdir())) < 300  # stopped part-way, not at the end
