"""A full disk stalls persistence, never the appender, and loses nothing once space returns."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capsa.logs import LogPersister, Stream, is_finished, read_log


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (need root and mount rights): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_disk_full_keeps_output_queued_and_visible_as_backlog(
    small_tmpfs: Path, gen_chunks: Any, tally: Any
) -> None:
    log_dir = small_tmpfs / "job"
    wrote = tally()
    p = LogPersister(segment_bytes=1 << 20)
    try:
        job = p.open("job", log_dir)
        t0 = time.perf_counter()
        for stream, data in gen_chunks(seed=7, total_bytes=12 << 20, max_chunk=256 << 10):
            wrote.add(stream, data, job.append(stream, data))
        job.finish()
        append_s = time.perf_counter() - t0
        assert append_s < 1.0, "append waited for the disk"

        assert not job.wait_persisted(timeout=0.5)
        assert isinstance(job.error, OSError) and job.error.errno == errno.ENOSPC
        backlog = job.backlog_bytes
        assert 0 < backlog <= wrote.nbytes
        assert p.backlog_bytes == backlog
        assert wrote.nbytes - backlog <= 4 << 20  # what fits on the 4 MiB filesystem
        assert not job.finished

        subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
        assert job.wait_persisted(timeout=15)
        assert job.backlog_bytes == 0 and p.backlog_bytes == 0
        assert job.error is None and job.finished
    finally:
        p.close(timeout=15)
    read = tally()
    for chunk in read_log(log_dir):
        read.add_chunk(chunk)
    assert read.summary() == wrote.summary()


def test_end_record_that_hits_a_full_disk_is_retried_until_written(small_tmpfs: Path) -> None:
    log_dir = small_tmpfs / "job"
    p = LogPersister(segment_bytes=1 << 20)
    try:
        job = p.open("job", log_dir)
        job.append(Stream.STDOUT, b"last words\n")
        assert job.wait_persisted(5)
        filler = small_tmpfs / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, bytes(4096))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        job.finish()
        assert not job.wait_persisted(timeout=0.5)
        assert isinstance(job.error, OSError) and job.error.errno == errno.ENOSPC
        assert not is_finished(log_dir)
        filler.unlink()
        assert job.wait_persisted(timeout=15)
        assert job.finished and is_finished(log_dir)
    finally:
        p.close(timeout=15)
    assert [(c.seq, c.data) for c in read_log(log_dir, follow=True)] == [(1, b"last words\n")]
