"""btrfs backend specifics: the loop-backed pool, read-only subvolumes, qgroup usage."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from snapshots_harness import btrfs_unavailable, write_layer

from capsa.errors import Unsupported
from capsa.snapshots import BtrfsConfig, BtrfsPool, BtrfsSnapshotter
from capsa.snapshots._fsutil import fs_type_of
from capsa.snapshots.btrfs import subvolume_id
from capsa.snapshots.mount import is_mountpoint
from capsa.state.db import Database

pytestmark = pytest.mark.skipif(bool(btrfs_unavailable()), reason=btrfs_unavailable() or "btrfs available")

MiB = 1024 * 1024


def loops_for(image: Path) -> list[str]:
    args = ["losetup", "--list", "--noheadings", "-O", "NAME", "-j", str(image)]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()


def readonly(path: Path) -> bool:
    out = subprocess.run(
        ["btrfs", "property", "get", "-ts", str(path), "ro"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip() == "ro=true"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "capsa.db")
    yield database
    database.close()


@pytest.fixture
def sn(tmp_path: Path, db: Database) -> Iterator[BtrfsSnapshotter]:
    snapshotter = BtrfsSnapshotter(tmp_path / "btrfs", db, BtrfsConfig(tmp_path / "btrfs.img", 256 * MiB))
    yield snapshotter
    snapshotter.close()
    assert not loops_for(tmp_path / "btrfs.img")


def test_pool_is_created_mounted_reused_and_torn_down(tmp_path: Path) -> None:
    image, mnt = tmp_path / "pool.img", tmp_path / "mnt"
    pool = BtrfsPool.ensure(image, 200 * MiB, mnt)
    try:
        assert fs_type_of(mnt) == "btrfs" and os.path.getsize(image) == 200 * MiB
        (mnt / "kept").write_bytes(b"data")
        again = BtrfsPool.ensure(image, 200 * MiB, mnt)  # a restart while still mounted
        assert again.device == pool.device and loops_for(image) == [pool.device]
    finally:
        pool.close()
    assert not is_mountpoint(mnt) and loops_for(image) == []
    reopened = BtrfsPool.ensure(image, 200 * MiB, mnt)  # after a reboot: same filesystem
    try:
        assert (mnt / "kept").read_bytes() == b"data"
    finally:
        reopened.close()
    assert not list(tmp_path.glob(".pool.img.new-*"))


def test_commit_and_view_make_read_only_subvolumes(sn: BtrfsSnapshotter) -> None:
    sn.prepare("x1")
    active = sn.upper_dir("x1")
    assert active is not None and not readonly(active)
    sn.commit("L1", "x1")
    assert readonly(active)
    sn.view("v", "L1")
    view_path = sn.snapshots_dir / str(sn._store.require("v").id)
    assert readonly(view_path)
    with pytest.raises(OSError):
        (active / "late").write_bytes(b"x")


def test_open_repairs_read_only_flags_left_wrong_by_a_crash(tmp_path: Path, db: Database) -> None:
    cfg = BtrfsConfig(tmp_path / "btrfs.img", 256 * MiB)
    sn = BtrfsSnapshotter(tmp_path / "btrfs", db, cfg)
    try:
        sn.prepare("x1")
        sn.commit("L1", "x1")
        sn.prepare("job", "L1")
        l1 = sn.snapshots_dir / str(sn._store.require("L1").id)
        job = sn.upper_dir("job")
        assert job is not None
        subprocess.run(["btrfs", "property", "set", "-ts", str(l1), "ro", "false"], check=True)
        subprocess.run(["btrfs", "property", "set", "-ts", str(job), "ro", "true"], check=True)
        sn.close()
        sn = BtrfsSnapshotter(tmp_path / "btrfs", db, cfg)
        assert readonly(l1) and not readonly(job)
    finally:
        sn.close()


def test_qgroups_count_shared_extents_once_unlike_walking(
    tmp_path: Path, sn: BtrfsSnapshotter, db: Database
) -> None:
    sn.prepare("x1")
    write_layer(sn, "x1", {"big": os.urandom(4 * MiB)})
    sn.commit("L1", "x1")
    sn.prepare("x2", "L1")
    upper = sn.upper_dir("x2")
    assert upper is not None
    fd = os.open(upper / "big", os.O_WRONLY)
    try:
        os.pwrite(fd, b"z" * 4096, 2 * MiB)  # rewrite one block of the parent's file in place
    finally:
        os.close(fd)
    with_quota = sn.usage("x2")
    walking = BtrfsSnapshotter(tmp_path / "btrfs", db, BtrfsConfig(quota=False))  # same fs, no qgroups
    without = walking.usage("x2")
    assert with_quota.inodes == without.inodes == 1
    assert with_quota.size < 256 * 1024 <= 4 * MiB <= without.size


def test_a_root_that_is_not_btrfs_is_unsupported(tmp_path: Path, db: Database) -> None:
    with pytest.raises(Unsupported, match="not btrfs"):
        BtrfsSnapshotter(tmp_path / "plain", db)


def test_subvolume_id_ioctl_agrees_with_btrfs_progs(sn: BtrfsSnapshotter) -> None:
    sn.prepare("x1")
    path = sn.upper_dir("x1")
    assert path is not None
    (path / "sub").mkdir()
    progs = subprocess.run(["btrfs", "inspect-internal", "rootid", str(path)], capture_output=True, text=True, check=True)
    assert subvolume_id(path) == subvolume_id(path / "sub") == int(progs.stdout) >= 256
    assert subvolume_id(sn.root) == 5  # the top-level subvolume
