"""Helpers shared by the unpacker's integration tests: tree snapshots and overlay mounts."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

__all__ = ["mounted_overlay", "snapshot"]


def snapshot(root: Path, *, dir_mtimes: bool = True, inodes: bool = True) -> dict[str, tuple[object, ...]]:
    """Every entry under ``root`` (symlinks never followed) with the metadata an unpacker sets.

    Hard links show up as a shared group id (the first path with that inode) when ``inodes``.
    """
    seen: dict[str, tuple[object, ...]] = {}
    first_path: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                content: object = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                content = (os.major(st.st_rdev), os.minor(st.st_rdev))
            else:
                content = None
            try:
                xattrs = {k: os.getxattr(path, k, follow_symlinks=False)
                          for k in sorted(os.listxattr(path, follow_symlinks=False)) if k.startswith("user.")}
            except OSError:
                xattrs = {}
            mtime = st.st_mtime_ns if dir_mtimes or not stat.S_ISDIR(st.st_mode) else None
            group = first_path.setdefault(st.st_ino, rel) if inodes and stat.S_ISREG(st.st_mode) else None
            seen[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, mtime, content, xattrs, group)
    return seen


@contextlib.contextmanager
def mounted_overlay(lowers_bottom_up: list[Path], target: Path) -> Iterator[Path]:
    """A read-only overlayfs of ``lowers_bottom_up`` at ``target``; always unmounted."""
    target.mkdir(parents=True, exist_ok=True)
    lowerdir = ":".join(str(p) for p in reversed(lowers_bottom_up))  # overlayfs lists the top layer first
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowerdir}", str(target)],
                   check=True, capture_output=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)
