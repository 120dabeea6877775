"""Find the real disk(s) behind a path, for io.max / blkio.throttle (never a hard-coded 8:0).

A path's st_dev may be a partition (throttle the whole disk), a device-mapper or md device (throttle
the disks in its ``slaves/``), a loop device (throttle the disk holding its backing file), or an
anonymous device (overlayfs, btrfs subvolumes) whose disk is found through /proc/self/mountinfo.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from capsa.errors import FailedPrecondition

from .parse import CgroupMount, parse_mountinfo

__all__ = ["BlockResolver", "resolve_block_devices"]

Dev = tuple[int, int]
_MAX_DEPTH = 16


def _dev_of(path: Path) -> Dev:
    st = os.stat(path)
    return os.major(st.st_dev), os.minor(st.st_dev)


def _block_node(path: Path) -> Dev | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return os.major(st.st_rdev), os.minor(st.st_rdev)


@dataclass
class BlockResolver:
    """Resolution with the host reads injectable, so every branch is testable on a fake sysfs."""

    sysfs: Path = Path("/sys")
    mountinfo: Callable[[], str] = field(default=lambda: Path("/proc/self/mountinfo").read_text())
    dev_of: Callable[[Path], Dev] = _dev_of
    block_node: Callable[[Path], Dev | None] = _block_node
    realpath: Callable[[Path], Path] = field(default=lambda p: Path(os.path.realpath(p)))

    def for_path(self, path: Path) -> tuple[Dev, ...]:
        return tuple(sorted(set(self._path(Path(path), 0))))

    def for_device(self, dev: Dev) -> tuple[Dev, ...]:
        return tuple(sorted(set(self._device(dev, Path(f"<{dev[0]}:{dev[1]}>"), 0))))

    def _path(self, path: Path, depth: int) -> list[Dev]:
        _guard(depth, path)
        try:
            dev = self.dev_of(path)
        except OSError as exc:
            raise FailedPrecondition(f"limit io_bps: cannot stat io_path {path}: {exc.strerror}") from None
        return self._device(dev, path, depth)

    def _device(self, dev: Dev, path: Path, depth: int) -> list[Dev]:
        _guard(depth, path)
        sysdir = self.sysfs / "dev" / "block" / f"{dev[0]}:{dev[1]}"
        if dev[0] != 0 and sysdir.exists():
            return self._disks(self.realpath(sysdir), path, depth + 1)
        return self._anonymous(dev, path, depth + 1)

    def _disks(self, sysdir: Path, path: Path, depth: int) -> list[Dev]:
        _guard(depth, path)
        if (sysdir / "partition").exists():
            sysdir = sysdir.parent
        slaves = sysdir / "slaves"
        names = sorted(os.listdir(slaves)) if slaves.is_dir() else []
        if names:
            out: list[Dev] = []
            for name in names:
                out += self._disks(self.realpath(slaves / name), path, depth + 1)
            return out
        backing = sysdir / "loop" / "backing_file"
        if backing.exists():
            return self._path(Path(backing.read_text().strip()), depth + 1)
        major, _, minor = (sysdir / "dev").read_text().strip().partition(":")
        return [(int(major), int(minor))]

    def _anonymous(self, dev: Dev, path: Path, depth: int) -> list[Dev]:
        mount = _mount_for(parse_mountinfo(self.mountinfo()), dev, str(self.realpath(path)))
        if mount is None:
            raise FailedPrecondition(
                f"limit io_bps: no mount found for io_path {path} (device {dev[0]}:{dev[1]})"
            )
        if mount.fstype == "overlay":
            # Writes land in upperdir; a read-only overlay reads from its top lower layer.
            layer = mount.option("upperdir") or (mount.option("lowerdir") or "").split(":")[0]
            if not layer:
                raise FailedPrecondition(
                    f"limit io_bps: overlay mount {mount.mountpoint} names no layer directory"
                )
            return self._path(Path(layer), depth + 1)
        node = self.block_node(Path(mount.source)) if mount.source.startswith("/") else None
        if node is not None:
            return self._device(node, path, depth + 1)
        raise FailedPrecondition(
            f"limit io_bps: io_path {path} is on {mount.fstype} ({mount.source} at {mount.mountpoint}), "
            "which has no backing block device to throttle"
        )


def _guard(depth: int, path: Path) -> None:
    if depth > _MAX_DEPTH:
        raise FailedPrecondition(
            f"limit io_bps: device chain behind {path} is deeper than {_MAX_DEPTH} levels"
        )


def _mount_for(mounts: list[CgroupMount], dev: Dev, real: str) -> CgroupMount | None:
    """The mount holding ``real``: one with device ``dev`` if any contains it, else the innermost.

    btrfs gives nested subvolumes their own anonymous device that mountinfo never shows, hence the
    fallback to the innermost containing mountpoint.
    """
    best: CgroupMount | None = None
    best_key = (False, -1)
    for mount in mounts:  # later lines are mounted on top, so ">=" lets them win ties
        mp = mount.mountpoint
        if not (real == mp or real.startswith(mp.rstrip("/") + "/")):
            continue
        key = (mount.dev == dev, len(mp))
        if key >= best_key:
            best, best_key = mount, key
    return best


def resolve_block_devices(path: Path) -> tuple[Dev, ...]:
    """(major, minor) of every whole disk backing ``path`` on this host; FailedPrecondition if none."""
    return BlockResolver().for_path(path)
