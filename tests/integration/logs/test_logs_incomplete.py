"""Back-pressure and giving up (ADR-0004): bounded memory, and a log is never silently short."""

from __future__ import annotations

import errno
import os
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsa.logs import LogPersister, Stream, is_finished, read_log


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (need root and mount rights): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def _fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, bytes(64 << 10))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_backlog_over_the_job_limit_hands_out_a_wake_fd_that_fires_after_the_drain(tiny_tmpfs: Path) -> None:
    ballast = tiny_tmpfs / "ballast"
    with LogPersister(job_backlog_bytes=1 << 20, total_backlog_bytes=64 << 20, fsync_on_close=False) as p:
        job = p.open("job", tiny_tmpfs / "log")
        job.append(Stream.STDOUT, b"x" * 1000)
        assert job.pause_fd() is None  # under the limit: nothing to wait for
        _fill(ballast)
        for _ in range(3):
            job.append(Stream.STDOUT, b"y" * (256 << 10))
            assert job.pause_fd() is None
        job.append(Stream.STDOUT, b"y" * (256 << 10))
        paused = job.pause_fd()
        assert paused is not None and job.backlog_bytes >= 1 << 20
        assert select.select([paused], [], [], 0.3)[0] == [], "woke although nothing could be written"
        ballast.unlink()
        assert select.select([paused], [], [], 10)[0] == [paused], "the wake fd never fired after the drain"
        assert job.backlog_bytes <= 512 << 10
        assert job.resume() == paused
        assert p.pauses == 1
        job.finish()
        assert job.wait_persisted(10)


def test_output_lost_to_a_full_disk_at_exit_is_counted_and_marked(tiny_tmpfs: Path) -> None:
    log_dir = tiny_tmpfs / "job"
    p = LogPersister(segment_bytes=64 << 10)
    try:
        job = p.open("job", log_dir)
        assert job.append(Stream.STDOUT, b"before\n") == 1
        assert job.wait_persisted(5)
        _fill(tiny_tmpfs / "ballast")
        lost = 0
        for i in range(8):
            lost += len(data := bytes([65 + i]) * (100 << 10))
            job.append(Stream.STDERR, data)
        deadline = time.monotonic() + 5
        while job.error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert job.error is not None and job.error.errno == errno.ENOSPC

        note = job.finish_at_exit()
        assert note == f"log incomplete: {lost} bytes not written (No space left on device)"
        assert job.incomplete_bytes == lost
        assert job.wait_persisted(10), "the notice and end record did not fit in the log's reserve"
        assert job.finished and is_finished(log_dir)
        assert not (log_dir / ".reserve").exists()
    finally:
        p.close(timeout=15)
    chunks = list(read_log(log_dir))
    assert [(c.seq, c.stream, c.data) for c in chunks] == [
        (1, Stream.STDOUT, b"before\n"),
        (9, Stream.NOTICE, f"log incomplete: {lost} bytes not written (No space left on device)\n".encode()),
    ]
    # A reader resuming after the notice sees nothing again; one asking from inside the gap sees the notice.
    assert list(read_log(log_dir, from_seq=10)) == []
    assert [c.seq for c in read_log(log_dir, from_seq=5, streams={Stream.STDOUT})] == [9]


def test_a_disk_that_recovers_before_exit_loses_nothing(tiny_tmpfs: Path) -> None:
    log_dir = tiny_tmpfs / "job"
    ballast = tiny_tmpfs / "ballast"
    p = LogPersister(segment_bytes=64 << 10)
    try:
        job = p.open("job", log_dir)
        _fill(ballast)
        for i in range(4):
            job.append(Stream.STDOUT, bytes([48 + i]) * (100 << 10))
        time.sleep(0.2)
        assert job.error is not None
        ballast.unlink()
        assert job.wait_persisted(10)
        assert job.finish_at_exit() == ""
        assert job.wait_persisted(10) and job.finished
    finally:
        p.close(timeout=15)
    assert [len(c.data) for c in read_log(log_dir)] == [100 << 10] * 4


def test_close_on_a_full_disk_gives_up_in_bounded_time(tiny_tmpfs: Path) -> None:
    log_dir = tiny_tmpfs / "job"
    p = LogPersister(segment_bytes=64 << 10, give_up_at_close_s=0.5)
    job = p.open("job", log_dir)
    os.unlink(log_dir / ".reserve")  # not even the notice fits
    _fill(tiny_tmpfs / "ballast")
    job.append(Stream.STDOUT, b"z" * (300 << 10))
    t0 = time.monotonic()
    p.close(timeout=10)
    assert time.monotonic() - t0 < 5
    assert job.incomplete_bytes == 300 << 10
    assert not is_finished(log_dir)


def test_output_of_an_exited_job_is_given_up_on_after_the_exit_grace(tiny_tmpfs: Path) -> None:
    """Writes that start failing only after the exit: retried for give_up_after_exit_s, then marked."""
    log_dir = tiny_tmpfs / "job"
    p = LogPersister(segment_bytes=64 << 10, give_up_after_exit_s=0.5)
    try:
        job = p.open("job", log_dir)
        _fill(tiny_tmpfs / "ballast")
        job.append(Stream.STDOUT, b"q" * (200 << 10))
        job.finish()  # not finish_at_exit: nothing is given up on at once
        assert not job.wait_persisted(timeout=0.3)
        assert job.incomplete_bytes == 0
        assert job.wait_persisted(timeout=10), "never gave up after the grace"
        assert job.incomplete_bytes == 200 << 10 and job.finished
    finally:
        p.close(timeout=15)
    assert [(c.seq, c.stream) for c in read_log(log_dir)] == [(1, Stream.NOTICE)]
