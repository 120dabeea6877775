"""btrfs snapshotter: one subvolume per snapshot, copy-on-write snapshots.

``root/snapshots/<id>`` is a subvolume holding the snapshot's complete tree
(so unpackers delete paths directly: :attr:`ApplyStyle.FULL_TREE`). prepare
takes a writable ``btrfs subvolume snapshot`` of the parent, view a read-only
one (``-r``), and commit flips the subvolume read-only in place
(``btrfs property set -ts <path> ro true``): no copy, no asynchronous
subvolume deletion, same qgroup. On open, read-only flags are reconciled with
the kinds in metadata (a crash between the flip and the metadata commit).

Usage excludes the parents: with quota groups enabled, ``size`` is the
subvolume's referenced bytes minus its parent's (exact for shared extents);
without them, and always for ``inodes``, entries whose (inode, ctime) differ
from the parent's are counted. :class:`BtrfsPool` creates and mounts a
loop-backed btrfs filesystem when the host has none.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

from capsa.errors import FailedPrecondition, Unsupported
from capsa.snapshots import _loop
from capsa.snapshots._common import DirSnapshotter
from capsa.snapshots._fsutil import diff_usage, disk_usage, fs_type_of, mount_entries, remove_tree, run_tool
from capsa.snapshots._store import Row
from capsa.snapshots.base import ApplyStyle, Kind, Mount, Usage
from capsa.snapshots.config import BtrfsConfig
from capsa.snapshots.mount import is_mountpoint, mount_all, unmount
from capsa.state.db import Database

__all__ = [
    "BtrfsPool",
    "BtrfsSnapshotter",
    "parse_qgroup_show",
    "parse_subvolume_list",
    "subvolume_id",
    "sync_filesystem",
]

_BTRFS_FIRST_FREE_OBJECTID = 256  # the inode number of every subvolume's root directory
# BTRFS_IOC_INO_LOOKUP = _IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args): 16 + 4080 bytes
_BTRFS_IOC_INO_LOOKUP = (3 << 30) | (4096 << 16) | (0x94 << 8) | 18

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def subvolume_id(path: Path) -> int:
    """The id of the subvolume holding ``path`` (what ``btrfs inspect-internal rootid`` prints)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # treeid 0 asks for the tree of the file itself; objectid is the root dir's
        args = bytearray(struct.pack("=QQ", 0, _BTRFS_FIRST_FREE_OBJECTID) + bytes(4080))
        fcntl.ioctl(fd, _BTRFS_IOC_INO_LOOKUP, args)
    finally:
        os.close(fd)
    return int(struct.unpack_from("=Q", args)[0])


def sync_filesystem(path: Path) -> None:
    """syncfs(2): commit the btrfs transaction holding ``path`` (qgroups update at commit)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def parse_qgroup_show(text: str) -> dict[int, tuple[int, int]]:
    """``btrfs qgroup show --raw`` → {subvolume id: (referenced, exclusive)} for level-0 qgroups."""
    out: dict[int, tuple[int, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or "/" not in parts[0]:
            continue
        level, _, ident = parts[0].partition("/")
        if not (level.isdigit() and ident.isdigit() and parts[1].isdigit() and parts[2].isdigit()):
            continue  # header or separator line
        if int(level) == 0:
            out[int(ident)] = (int(parts[1]), int(parts[2]))
    return out


def parse_subvolume_list(text: str) -> list[tuple[int, str]]:
    """``btrfs subvolume list`` → [(id, path relative to the filesystem root)]."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        # ID 256 gen 9 top level 5 path snapshots/1
        if len(parts) >= 9 and parts[0] == "ID" and parts[1].isdigit() and " path " in line:
            out.append((int(parts[1]), line.split(" path ", 1)[1]))
    return out


@dataclass
class BtrfsPool:
    """A btrfs filesystem in an image file, on a loop device, mounted at ``mountpoint``."""

    image_path: Path
    mountpoint: Path
    device: str

    @classmethod
    def ensure(cls, image_path: Path, size_bytes: int, mountpoint: Path, *, quota: bool = True) -> BtrfsPool:
        """Create (if missing), attach and mount the filesystem; idempotent across restarts."""
        image = Path(os.path.abspath(image_path))
        mnt = Path(os.path.abspath(mountpoint))
        mnt.mkdir(parents=True, exist_ok=True)
        image.parent.mkdir(parents=True, exist_ok=True)
        for stale in image.parent.glob(f".{image.name}.new-*"):
            stale.unlink()  # a creation interrupted before its rename
        if not image.exists():
            # format under a temporary name: the final name exists only once formatted
            tmp = image.with_name(f".{image.name}.new-{secrets.token_hex(4)}")
            _loop.create_sparse(tmp, size_bytes)
            try:
                run_tool(["mkfs.btrfs", "-q", str(tmp)])
                os.rename(tmp, image)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        device = _loop.attach(image)
        try:
            current = [e for e in mount_entries() if e.mount_point == str(mnt)]
            if current:
                if current[-1].source != device:
                    raise FailedPrecondition(f"{mnt} already has {current[-1].source} mounted, not {device}")
            else:
                mount_all([Mount("btrfs", device, ())], mnt)
            pool = cls(image, mnt, device)
            if quota:
                run_tool(["btrfs", "quota", "enable", str(mnt)])
        except BaseException:
            if not is_mountpoint(mnt):
                _loop.detach(device)
            raise
        return pool

    def close(self) -> None:
        """Unmount and detach the loop device (the image file stays)."""
        if is_mountpoint(self.mountpoint):
            unmount(self.mountpoint)
        for dev in _loop.devices_for(self.image_path):
            _loop.detach(dev)


class BtrfsSnapshotter(DirSnapshotter):
    name = "btrfs"
    apply_style = ApplyStyle.FULL_TREE

    def __init__(self, root: Path, db: Database, config: BtrfsConfig | None = None) -> None:
        cfg = config or BtrfsConfig()
        self._pool: BtrfsPool | None = None
        if cfg.image_path is not None:
            self._pool = BtrfsPool.ensure(cfg.image_path, cfg.size_bytes, root, quota=cfg.quota)
        try:
            fstype = fs_type_of(root) if os.path.isdir(root) else ""
            if fstype != "btrfs":
                raise Unsupported(
                    f"btrfs snapshotter root {root} is on {fstype or 'nothing mounted'}, not btrfs;"
                    " mount a btrfs filesystem there or configure image_path"
                )
            super().__init__(root, db)
            # a pool we set up already has quotas on (BtrfsPool.ensure enables them)
            self.quota = cfg.quota and (self._pool is not None or self._enable_quota())
            self._open()
        except BaseException:
            if self._pool is not None:
                self._pool.close()
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    # -- btrfs commands ---------------------------------------------------------------
    def _btrfs(self, *args: str) -> str:
        return run_tool(["btrfs", *args])

    def _enable_quota(self) -> bool:
        try:
            self._btrfs("quota", "enable", str(self.root))
        except FailedPrecondition:
            return False  # e.g. a filesystem mounted without the rights to: fall back to walking
        return True

    def _is_subvolume(self, path: Path) -> bool:
        try:
            return os.lstat(path).st_ino == _BTRFS_FIRST_FREE_OBJECTID
        except FileNotFoundError:
            return False

    def _set_readonly(self, path: Path, readonly: bool) -> None:
        self._btrfs("property", "set", "-ts", str(path), "ro", "true" if readonly else "false")

    def _qgroups(self) -> dict[int, tuple[int, int]]:
        sync_filesystem(self.root)
        return parse_qgroup_show(self._btrfs("qgroup", "show", "--raw", str(self.root)))

    # -- hooks ------------------------------------------------------------------------
    def upper_dir(self, key: str) -> Path | None:
        row = self._store.require(key)
        return self._path(row.id) if row.kind is Kind.ACTIVE else None

    def _storage_ok(self, row: Row) -> bool:
        return self._is_subvolume(self._path(row.id))

    def _make(self, tmp: Path, kind: Kind, parent: Row | None) -> None:
        if parent is None:
            self._btrfs("subvolume", "create", str(tmp))
            if kind is Kind.VIEW:
                self._set_readonly(tmp, True)
            return
        readonly = ["-r"] if kind is Kind.VIEW else []
        self._btrfs("subvolume", "snapshot", *readonly, str(self._path(parent.id)), str(tmp))

    def _seal(self, row: Row) -> None:
        self._set_readonly(self._path(row.id), True)

    def _unseal(self, row: Row) -> None:
        self._set_readonly(self._path(row.id), False)

    def _reconcile(self) -> None:
        # read-only subvolumes below snapshots/; listed paths are relative to the
        # filesystem's top level, whose position relative to root is unknown
        listed = self._btrfs("subvolume", "list", "-r", "-o", str(self.snapshots_dir))
        readonly = {
            os.path.basename(p)
            for _, p in parse_subvolume_list(listed)
            if os.path.basename(os.path.dirname(p)) == self.snapshots_dir.name
        }
        for row in self._store.all():
            path = self._path(row.id)
            if not self._is_subvolume(path):
                continue
            want_ro = row.kind is not Kind.ACTIVE
            if (str(row.id) in readonly) != want_ro:
                self._set_readonly(path, want_ro)

    def _measure(self, row: Row) -> Usage:
        parent = self._store.by_id(row.parent_id) if row.parent_id is not None else None
        parent_path = self._path(parent.id) if parent else None
        walked = diff_usage(self._path(row.id), parent_path)
        if not self.quota:
            return walked
        groups = self._qgroups()
        own = groups.get(subvolume_id(self._path(row.id)))
        if own is None:
            return walked
        base = groups.get(subvolume_id(parent_path), (0, 0)) if parent_path else (0, 0)
        return Usage(size=max(0, own[0] - base[0]), inodes=walked.inodes)

    def _build_mounts(self, row: Row, parents: list[Row]) -> list[Mount]:
        mode = "rw" if row.kind is Kind.ACTIVE else "ro"
        return [Mount("bind", str(self._path(row.id)), (mode, "rbind"))]

    def _destroy(self, path: Path) -> int:
        if not self._is_subvolume(path):
            freed = disk_usage(path).size if path.is_dir() else 0
            remove_tree(path)
            return freed
        # with qgroups, exclusive bytes: what deleting this subvolume actually gives back
        freed = self._qgroups().get(subvolume_id(path), (0, 0))[1] if self.quota else disk_usage(path).size
        try:
            self._btrfs("subvolume", "delete", str(path))
        except FailedPrecondition:
            if self._is_subvolume(path):
                raise
            return 0  # someone else deleted it meanwhile
        return freed
