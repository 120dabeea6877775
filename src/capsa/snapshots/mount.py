"""Apply :class:`~capsa.snapshots.base.Mount` descriptions with mount(2).

Snapshotters only *describe* mounts; whoever owns the target (the runtime, a
layer unpacker, a test) applies them here, in the calling process's mount
namespace. Python 3.11 has no ``os.mount``; the calls go through :mod:`capsa.linux`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from capsa import linux
from capsa.errors import InvalidArgument, LimitExceeded
from capsa.snapshots._fsutil import mount_entries
from capsa.snapshots.base import Mount

__all__ = ["MAX_MOUNT_DATA", "is_mountpoint", "mount_all", "mount_data", "mounted", "unmount"]

#: mount(2) copies at most one page of filesystem data, NUL included.
MAX_MOUNT_DATA = 4095

_MS_RDONLY = 0x1
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MS_SYNCHRONOUS = 0x10
_MS_REMOUNT = 0x20
_MS_DIRSYNC = 0x80
_MS_NOATIME = 0x400
_MS_NODIRATIME = 0x800
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_RELATIME = 0x200000
_MS_STRICTATIME = 0x1000000
_MNT_DETACH = 0x2

_FLAGS = {
    "ro": _MS_RDONLY,
    "rw": 0,
    "nosuid": _MS_NOSUID,
    "nodev": _MS_NODEV,
    "noexec": _MS_NOEXEC,
    "sync": _MS_SYNCHRONOUS,
    "dirsync": _MS_DIRSYNC,
    "noatime": _MS_NOATIME,
    "nodiratime": _MS_NODIRATIME,
    "relatime": _MS_RELATIME,
    "strictatime": _MS_STRICTATIME,
    "bind": _MS_BIND,
    "rbind": _MS_BIND | _MS_REC,
}

def _sys_mount(source: str | None, target: Path, fstype: str | None, flags: int, data: str | None) -> None:
    linux.mount(source, target, fstype, flags, data or None)


def mount_data(options: Sequence[str]) -> tuple[int, str]:
    """Split mount(8)-style options into mount(2) flags and the filesystem data string."""
    flags = 0
    data: list[str] = []
    for opt in options:
        if opt in _FLAGS:
            flags |= _FLAGS[opt]
        elif opt:
            data.append(opt)
    text = ",".join(data)
    if len(text.encode()) > MAX_MOUNT_DATA:
        raise LimitExceeded(
            f"mount data is {len(text.encode())} bytes, more than mount(2) accepts ({MAX_MOUNT_DATA})"
        )
    return flags, text


def _mount_one(m: Mount, target: Path) -> None:
    flags, data = mount_data(m.options)
    if m.type == "bind":
        if not flags & _MS_BIND:
            flags |= _MS_BIND
        _sys_mount(m.source, target, None, flags & (_MS_BIND | _MS_REC), None)
        extra = flags & ~(_MS_BIND | _MS_REC)
        if extra:
            # a bind mount ignores flags at creation; they need a remount
            try:
                _sys_mount(None, target, None, _MS_REMOUNT | _MS_BIND | extra, None)
            except OSError:
                unmount(target, lazy=True)
                raise
        return
    _sys_mount(m.source, target, m.type, flags, data)


def mount_all(mounts: Sequence[Mount], target: Path) -> None:
    """Mount each description onto ``target`` in order; undo the applied ones on failure."""
    if not mounts:
        raise InvalidArgument("no mounts to apply")
    done = 0
    try:
        for m in mounts:
            _mount_one(m, Path(target))
            done += 1
    except BaseException:
        for _ in range(done):
            unmount(target, lazy=True)
        raise


def unmount(target: Path, *, lazy: bool = False) -> None:
    linux.umount2(target, _MNT_DETACH if lazy else 0)


def is_mountpoint(path: Path) -> bool:
    real = os.path.realpath(path)
    return any(e.mount_point == real for e in mount_entries())


@contextmanager
def mounted(mounts: Sequence[Mount], target: Path | None = None) -> Iterator[Path]:
    """Apply ``mounts`` on ``target`` (a fresh temporary directory when omitted),
    yield it, then unmount everything (and remove the temporary directory)."""
    made = target is None
    where = Path(tempfile.mkdtemp(prefix="capsa-mnt-")) if target is None else Path(target)
    try:
        mount_all(mounts, where)
        try:
            yield where
        finally:
            for _ in mounts:
                unmount(where)
    finally:
        if made:
            os.rmdir(where)
