"""Resolving the disk behind real paths, loop devices and overlay mounts on this host.

util-linux (findmnt, lsblk) is the independent oracle for which disk holds tmp_path.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsa.errors import FailedPrecondition
from capsa.runtime.cgroups import BlockResolver, resolve_block_devices


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def disk_of_tmp(tmp_path: Path) -> tuple[int, int]:
    source = _run("findmnt", "-no", "SOURCE", "-T", str(tmp_path)).splitlines()[-1]  # last = on top
    if not source.startswith("/dev/"):
        pytest.skip(f"{tmp_path} is on {source}, not a block device")
    parent = _run("lsblk", "-ndo", "PKNAME", source)
    disk = f"/dev/{parent}" if parent else source
    major, minor = _run("lsblk", "-ndo", "MAJ:MIN", disk).split(":")
    return int(major), int(minor)


def test_tmp_path_resolves_to_the_disk_util_linux_names(tmp_path: Path, disk_of_tmp: tuple[int, int]) -> None:
    assert resolve_block_devices(tmp_path) == (disk_of_tmp,)


def test_a_path_on_tmpfs_is_refused_with_the_reason(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if _run("findmnt", "-no", "FSTYPE", "-T", str(shm)).splitlines()[-1] != "tmpfs":  # last = on top
        pytest.skip("/dev/shm is not tmpfs here")
    with pytest.raises(FailedPrecondition, match="tmpfs"):
        resolve_block_devices(shm)


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    image = tmp_path / "disk.img"
    with image.open("wb") as f:
        f.truncate(16 << 20)
    try:
        dev = _run("losetup", "-f", "--show", str(image))
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot attach a loop device: {exc}")
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)


def test_a_loop_device_resolves_to_the_disk_holding_its_backing_file(
    loop_device: str, disk_of_tmp: tuple[int, int]
) -> None:
    rdev = os.stat(loop_device).st_rdev
    assert BlockResolver().for_device((os.major(rdev), os.minor(rdev))) == (disk_of_tmp,)


@pytest.fixture
def overlay(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting overlayfs needs root")
    for d in ("lower", "upper", "work", "merged"):
        (tmp_path / d).mkdir()
    (tmp_path / "lower/file").write_text("x")
    opts = f"lowerdir={tmp_path / 'lower'},upperdir={tmp_path / 'upper'},workdir={tmp_path / 'work'}"
    merged = tmp_path / "merged"
    try:
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True, capture_output=True
        )
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot mount overlayfs: {exc.stderr.strip()}")
    try:
        yield merged
    finally:
        subprocess.run(["umount", str(merged)], check=True)


def test_an_overlay_path_resolves_through_its_upper_directory(
    overlay: Path, disk_of_tmp: tuple[int, int]
) -> None:
    assert os.major(os.stat(overlay / "file").st_dev) == 0  # overlayfs has an anonymous device
    assert resolve_block_devices(overlay / "file") == (disk_of_tmp,)
