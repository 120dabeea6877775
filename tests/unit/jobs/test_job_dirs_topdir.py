"""<home>/jobs is marked FS_TOPDIR_FL where the filesystem has the flag (capsa.jobs.jobdirs)."""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest

from capsa.jobs.jobdirs import prepare_jobs_dir

_GETFLAGS, _TOPDIR = 0x80086601, 0x00020000


def _flags(path: Path) -> int | None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return struct.unpack("l", fcntl.ioctl(fd, _GETFLAGS, struct.pack("l", 0)))[0]
    except OSError:
        return None
    finally:
        os.close(fd)


def test_jobs_dir_is_created_and_marked_a_top_directory(tmp_path: Path) -> None:
    if _flags(tmp_path) is None:
        pytest.skip(f"the filesystem of {tmp_path} has no inode flags (FS_IOC_GETFLAGS)")
    jobs = tmp_path / "home" / "jobs"
    marked = prepare_jobs_dir(jobs)
    flags = _flags(jobs)
    assert jobs.is_dir() and flags is not None
    assert marked == bool(flags & _TOPDIR)
    if not marked:
        pytest.skip(f"the filesystem of {tmp_path} does not keep FS_TOPDIR_FL")
    sub = jobs / "job-1"
    sub.mkdir()
    assert not (_flags(sub) or 0) & _TOPDIR   # not inherited: a job's own directories stay beside it
    assert prepare_jobs_dir(jobs)   # again: nothing changes, no error


def test_a_filesystem_without_the_flag_is_fine(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm")
    base = Path(tempfile.mkdtemp(dir=shm))
    try:
        jobs = base / "jobs"
        prepare_jobs_dir(jobs)   # tmpfs: the flag may or may not exist; either way no error
        assert jobs.is_dir()
    finally:
        shutil.rmtree(base)
