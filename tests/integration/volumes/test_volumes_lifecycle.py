"""Volumes on the real kernel: data survives jobs and restarts, sizes are enforced, nothing leaks."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest
from volumes_helpers import loops_under, mounts_under, wait_no_loops

from capsa.errors import AlreadyExists, Conflict, NotFound
from capsa.state import Database
from capsa.volumes import VolumeManager, _loop

MiB = 1 << 20


def _fill(path: Path, size: int) -> None:
    chunk = b"\xa5" * MiB
    with open(path, "wb") as f:
        written = 0
        while written < size:
            written += f.write(chunk[: min(MiB, size - written)])
        f.flush()
        os.fsync(f.fileno())


def test_filesystem_volume_keeps_its_data_from_one_job_to_the_next(volumes: VolumeManager, tmp_path: Path) -> None:
    vol = volumes.create("data", "32MiB", "filesystem")
    assert (vol.type, vol.size_bytes, vol.mounted, vol.users) == ("filesystem", 32 * MiB, False, ())

    path = volumes.acquire("data", "job-1")
    assert path == Path(vol.path) and str(path) in mounts_under(tmp_path)
    assert len(loops_under(tmp_path)) == 1
    (path / "result.txt").write_text("written by job-1\n")
    volumes.release("data", "job-1")
    assert mounts_under(tmp_path) == [] and wait_no_loops(tmp_path) == []
    assert not (path / "result.txt").exists()  # it lives in the image, not in the mount point

    path = volumes.acquire("data", "job-2")
    assert (path / "result.txt").read_text() == "written by job-1\n"
    volumes.release("data", "job-2")


def test_writing_beyond_a_filesystem_volume_fails_with_enospc(volumes: VolumeManager) -> None:
    path = volumes.acquire(volumes.create("small", "16MiB").name, "job-w")
    info = volumes.get("small")
    assert info.capacity_bytes is not None and info.capacity_bytes <= 16 * MiB
    with pytest.raises(OSError) as err:
        _fill(path / "too-big", 17 * MiB)
    assert err.value.errno == errno.ENOSPC
    volumes.release("small", "job-w")


def test_writing_beyond_a_memory_volume_fails_with_enospc(volumes: VolumeManager) -> None:
    vol = volumes.create("scratch", "4MiB", "memory")
    assert vol.mounted and vol.capacity_bytes == 4 * MiB
    path = volumes.acquire("scratch", "job-m")
    _fill(path / "fits", 3 * MiB)
    with pytest.raises(OSError) as err:
        _fill(path / "overflows", 2 * MiB)
    assert err.value.errno == errno.ENOSPC
    volumes.release("scratch", "job-m")


def test_memory_volume_content_outlives_the_job_that_wrote_it(volumes: VolumeManager) -> None:
    volumes.create("cache", "8MiB", "memory")
    (volumes.acquire("cache", "job-a") / "k").write_text("v")
    volumes.release("cache", "job-a")
    assert volumes.get("cache").mounted
    assert (volumes.acquire("cache", "job-b") / "k").read_text() == "v"
    volumes.release("cache", "job-b")


def test_a_volume_is_reference_counted_per_job(volumes: VolumeManager, tmp_path: Path) -> None:
    volumes.create("shared", "16MiB")
    first = volumes.acquire("shared", "job-1")
    assert volumes.acquire("shared", "job-1") == first  # the same job twice counts once
    volumes.acquire("shared", "job-2")
    assert volumes.get("shared").users == ("job-1", "job-2")
    volumes.release("shared", "job-1")
    assert volumes.get("shared").mounted and str(first) in mounts_under(tmp_path)
    assert volumes.release_all("job-2") == ["shared"]
    assert not volumes.get("shared").mounted


@pytest.mark.parametrize("kind", ["filesystem", "memory"])
def test_rm_is_refused_while_a_job_holds_the_volume(volumes: VolumeManager, tmp_path: Path, kind: str) -> None:
    volumes.create("busy", "16MiB", kind)
    volumes.acquire("busy", "job-x")
    with pytest.raises(Conflict, match="in use by 1 job"):
        volumes.remove("busy")
    assert volumes.get("busy").users == ("job-x",)
    volumes.release("busy", "job-x")
    volumes.remove("busy")
    assert not (tmp_path / "volumes" / "busy").exists()
    assert mounts_under(tmp_path) == []
    with pytest.raises(NotFound):
        volumes.get("busy")
    with pytest.raises(NotFound):
        volumes.acquire("busy", "job-y")


def test_names_are_unique(volumes: VolumeManager) -> None:
    volumes.create("once", "8MiB")
    with pytest.raises(AlreadyExists):
        volumes.create("once", "8MiB", "memory")
    assert [v.name for v in volumes.list()] == ["once"]


def test_volumes_survive_a_daemon_restart(volumes: VolumeManager, tmp_path: Path) -> None:
    volumes.create("keep", "16MiB")
    (volumes.acquire("keep", "job-1") / "f").write_text("kept")
    volumes.release("keep", "job-1")

    restarted = VolumeManager(Database(tmp_path / "capsa.db"), tmp_path / "volumes")
    assert [v.name for v in restarted.list()] == ["keep"]
    assert (restarted.acquire("keep", "job-2") / "f").read_text() == "kept"
    restarted.release("keep", "job-2")


def test_reacquiring_while_a_foreign_namespace_holds_the_old_mount_reuses_its_loop_device(
    volumes: VolumeManager, tmp_path: Path
) -> None:
    volumes.create("pinned", "16MiB")
    path = volumes.acquire("pinned", "job-1")
    (path / "f").write_text("one")
    # A process that copied the host's mounts (as any new mount namespace does) pins the ext4 instance.
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "60"])
    try:
        time.sleep(0.2)
        volumes.release("pinned", "job-1")
        pinned = loops_under(tmp_path)
        assert len(pinned) == 1, "the foreign copy should keep the loop device alive"
        path = volumes.acquire("pinned", "job-2")
        assert loops_under(tmp_path) == pinned  # the same device again, never a second one
        (path / "f").write_text((path / "f").read_text() + " two")
        volumes.release("pinned", "job-2")
    finally:
        holder.kill()
        holder.wait()
    assert wait_no_loops(tmp_path) == []
    assert (volumes.acquire("pinned", "job-3") / "f").read_text() == "one two"
    volumes.release("pinned", "job-3")


def test_a_root_reached_through_a_symlink_still_finds_its_loop_devices(
    volumes: VolumeManager, tmp_path: Path
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    db = Database(tmp_path / "other.db")
    other = VolumeManager(db, tmp_path / "link")
    try:
        other.create("s", "8MiB")
        other.acquire("s", "job-1")
        # The kernel names the backing file by its real path; the manager must match it.
        assert len(_loop.devices_for(other.root / "s" / "image.ext4")) == 1
        other.release("s", "job-1")
        other.remove("s")
    finally:
        db.close()
