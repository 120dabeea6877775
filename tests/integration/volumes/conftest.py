"""A VolumeManager on the real kernel under ``tmp_path``; afterwards no mount and no loop device may remain."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from volumes_helpers import mounts_under, wait_no_loops

from capsa.state import Database
from capsa.volumes import VolumeManager


def _reason() -> str | None:
    if shutil.which("mkfs.ext4") is None:
        return "needs mkfs.ext4 (e2fsprogs)"
    if not Path("/dev/loop-control").exists():
        return "the kernel has no loop device support (/dev/loop-control missing)"
    return None


@pytest.fixture
def volumes(tmp_path: Path) -> Iterator[VolumeManager]:
    reason = _reason()
    if reason:
        pytest.skip(reason)
    db = Database(tmp_path / "capsa.db")
    mgr = VolumeManager(db, tmp_path / "volumes")
    try:
        yield mgr
    finally:
        for vol in mgr.list():
            for job in vol.users:
                mgr.release(vol.name, job)
            mgr.remove(vol.name)
        db.close()
        assert mounts_under(tmp_path) == [], "mounts left behind"
        assert wait_no_loops(tmp_path) == [], "loop devices left attached"
