"""What the supervisor's loop relies on when a burst of jobs ends: the persister's finished fd, and
a log directory that gains no files but its segments and reserve."""

from __future__ import annotations

import fcntl
import os
import select
from pathlib import Path

import pytest

from capsa.errors import Conflict
from capsa.logs import LogPersister, Stream, is_finished


def _readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def test_finished_fd_becomes_readable_when_a_log_finishes(tmp_path: Path) -> None:
    with LogPersister(fsync_on_close=False) as p:
        fd = p.finished_fd()
        job = p.open("j", tmp_path / "j")
        job.append(Stream.STDOUT, b"out\n")
        assert job.wait_persisted(5)
        assert not _readable(fd, 0.05)   # data written, log not finished: nothing to wake for
        job.finish()
        assert _readable(fd, 5)
        assert job.finished and is_finished(tmp_path / "j")
        assert os.eventfd_read(fd) == 1
        assert not _readable(fd, 0.05)   # read once per wake-up; the next finish wakes again
        other = p.open("k", tmp_path / "k")
        other.finish()
        assert _readable(fd, 5) and other.finished


def test_the_writer_lock_is_the_directory_itself(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    with LogPersister(fsync_on_close=False) as p:
        p.open("j", log_dir)
        assert sorted(os.listdir(log_dir)) == [".reserve", "00000000000000000001.seg"]
        fd = os.open(log_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(BlockingIOError):   # what another process trying to write would meet
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        with LogPersister(fsync_on_close=False) as second, pytest.raises(Conflict):
            second.open("j", log_dir)
