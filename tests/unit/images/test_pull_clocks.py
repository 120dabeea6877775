"""The seed's clocks (image ADR-005) with injected time: a download stall, an image's download
deadline, and one extraction clock per image across its layers."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsa.errors import LimitExceeded, Timeout
from capsa.images.content import ContentStore, DownloadClocks, copy_to_store
from capsa.images.unpack import UnpackBudget, UnpackLimits, apply_layer
from capsa.state.db import Database


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ContentStore]:
    db = Database(tmp_path / "capsa.db")
    yield ContentStore(tmp_path / "content", db)
    db.close()


def test_a_slow_but_steady_download_is_never_cut_by_the_stall_clock(store: ContentStore) -> None:
    clock = FakeClock()

    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            clock.now += 299  # just under the 300 s stall limit between bytes: 100 minutes in all
            yield b"x" * 10

    w = store.writer("steady")
    assert copy_to_store(chunks(), w, clocks=DownloadClocks(stall_s=300, clock=clock)) == 200
    w.close()


def test_no_byte_for_the_stall_limit_fails_the_download(store: ContentStore) -> None:
    clock = FakeClock()

    def chunks() -> Iterator[bytes]:
        yield b"x" * 10
        clock.now += 301
        yield b""  # a source that wakes up with nothing (keep-alive, empty frame)

    w = store.writer("stalled")
    with pytest.raises(Timeout, match="stalled: no byte for 301 s") as caught:
        copy_to_store(chunks(), w, clocks=DownloadClocks(stall_s=300, clock=clock))
    assert caught.value.detail["clock"] == "stall" and w.offset == 10
    w.close()


def test_the_stall_clock_keeps_running_across_attempts(store: ContentStore) -> None:
    clock = FakeClock()
    w = store.writer("retried")
    earlier_attempt_last_byte = clock.now - 400  # recorded in the run's progress by the previous attempt
    with pytest.raises(Timeout, match="stalled"):
        copy_to_store(iter([b"never read"]), w, clocks=DownloadClocks(stall_s=300, clock=clock,
                                                                       last_byte_at=earlier_attempt_last_byte))
    assert w.offset == 0
    w.close()


def test_the_image_deadline_cuts_even_a_flowing_download(store: ContentStore) -> None:
    clock = FakeClock()

    def chunks() -> Iterator[bytes]:
        while True:
            clock.now += 10
            yield b"y" * 10

    w = store.writer("deadline")
    with pytest.raises(Timeout, match="download deadline") as caught:
        copy_to_store(chunks(), w, clocks=DownloadClocks(stall_s=300, deadline_at=clock.now + 55, clock=clock))
    assert caught.value.detail["clock"] == "deadline" and w.offset == 60
    w.close()


def _layer(name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    return buf.getvalue()


def test_extraction_time_is_one_clock_for_all_layers_of_an_image(tmp_path: Path) -> None:
    mono, wall = FakeClock(50.0), FakeClock(10_000.0)
    limits = UnpackLimits(timeout_s=1800)
    started_wall = wall.now - 1000  # the image's first layer started unpacking 1000 s ago
    for i in range(2):  # each later layer (another run, perhaps another process) continues that clock
        root = tmp_path / f"l{i}"
        root.mkdir()
        budget = UnpackBudget.since(started_wall, clock=mono, wall=wall)
        apply_layer(io.BytesIO(_layer(f"f{i}")), root, limits=limits, budget=budget)
        wall.now += 500
        mono.now += 500
    root = tmp_path / "late"
    root.mkdir()
    with pytest.raises(LimitExceeded, match="timeout_s=1800") as caught:  # 1000 + 2*500 s > 30 min
        apply_layer(io.BytesIO(_layer("late")), root, limits=limits,
                    budget=UnpackBudget.since(started_wall, clock=mono, wall=wall))
    assert caught.value.detail["limit"] == "timeout_s"
