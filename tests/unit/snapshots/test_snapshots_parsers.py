"""Parsers of mountinfo, btrfs and ext4 tool output; usage walkers on real files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from capsa.snapshots._fsutil import diff_usage, disk_usage, fs_type_of, parse_mountinfo
from capsa.snapshots.btrfs import parse_qgroup_show, parse_subvolume_list
from capsa.snapshots.devmapper.ext4 import mkfs_ext4

# captured on this host: btrfs-progs v6.2, `btrfs qgroup show --raw <mnt>` (trailing blanks trimmed)
QGROUP_SHOW_V6 = """\
Qgroupid    Referenced    Exclusive   Path
--------    ----------    ---------   ----
0/5              16384        16384   <toplevel>
0/256          1064960        16384   snapshots/1
0/257          1064960        16384   snapshots/2
1/100          2129920      1064960   <0 member qgroups>
"""

# the older column layout (btrfs-progs 4.x/5.x)
QGROUP_SHOW_V5 = """\
qgroupid         rfer         excl
--------         ----         ----
0/5             16384        16384
0/258         1081344      1064960
"""


def test_parse_qgroup_show_current_layout() -> None:
    assert parse_qgroup_show(QGROUP_SHOW_V6) == {
        5: (16384, 16384),
        256: (1064960, 16384),
        257: (1064960, 16384),
    }


def test_parse_qgroup_show_older_layout() -> None:
    assert parse_qgroup_show(QGROUP_SHOW_V5) == {5: (16384, 16384), 258: (1081344, 1064960)}


def test_parse_subvolume_list_keeps_paths_with_spaces() -> None:
    out = "ID 256 gen 11 top level 5 path snapshots/1\nID 300 gen 12 top level 5 path a dir/snapshots/2\n"
    assert parse_subvolume_list(out) == [(256, "snapshots/1"), (300, "a dir/snapshots/2")]


def test_parse_mountinfo_unescapes_and_finds_the_fs_type() -> None:
    text = (
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        "96 27 7:0 / /tmp/with\\040space rw,relatime shared:51 - btrfs /dev/loop0 rw,space_cache=v2,subvolid=5,subvol=/\n"
    )
    proc, loop = parse_mountinfo(text)
    assert (proc.mount_point, proc.fs_type) == ("/proc", "proc")
    assert (loop.mount_point, loop.fs_type, loop.source) == ("/tmp/with space", "btrfs", "/dev/loop0")


def test_fs_type_of_this_hosts_root() -> None:
    assert fs_type_of(Path("/proc/self")) == "proc"


def test_disk_usage_counts_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(os.urandom(64 * 1024))
    os.link(tmp_path / "d" / "f", tmp_path / "g")
    os.symlink("d/f", tmp_path / "s")
    usage = disk_usage(tmp_path)
    assert usage.inodes == 3  # d, f (=g), s
    assert 64 * 1024 <= usage.size <= 64 * 1024 + 3 * 4096


def test_diff_usage_counts_only_what_differs_from_the_parent(tmp_path: Path) -> None:
    parent, child = tmp_path / "p", tmp_path / "c"
    parent.mkdir()
    (parent / "same").write_bytes(b"x" * 8192)
    subprocess.run(["cp", "-a", "--reflink=auto", str(parent), str(child)], check=True)
    # cp makes new inodes: on a non-btrfs tmp dir every entry differs, so compare with itself first
    assert diff_usage(parent, parent).inodes == 0
    (parent / "new").write_bytes(b"y" * 4096)
    assert diff_usage(parent, child).inodes == 2  # "same" (other inode) and "new"
    assert diff_usage(child, None) == disk_usage(child)


def test_mkfs_ext4_formats_with_containerds_options(tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    with open(image, "wb") as f:
        f.truncate(8 * 1024 * 1024)
    mkfs_ext4(str(image), "nodiscard,lazy_itable_init=0,lazy_journal_init=0")
    out = subprocess.run(["tune2fs", "-l", str(image)], capture_output=True, text=True, check=True).stdout
    assert "Filesystem magic number:  0xEF53" in out and "has_journal" in out


def test_mkfs_failure_is_a_typed_error(tmp_path: Path) -> None:
    from capsa.errors import FailedPrecondition

    with pytest.raises(FailedPrecondition, match="mkfs.ext4"):
        mkfs_ext4(str(tmp_path / "missing" / "x.img"), "")
