"""verify_layout: the post-unpack check of a whole root (image ADR-004, item 5).

It re-derives, from the tree alone, the invariants the unpacker enforces while
writing, so a bug in the unpacker (or a tree produced some other way) is caught
before a job runs on it. It walks with directory fds and never follows a symlink.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from pathlib import Path

from capsa.errors import UnsafeArchive

from ._names import WHITEOUT_PREFIX, symlink_escapes
from ._tree import Tree, is_whiteout_device, join

__all__ = ["verify_layout"]

_OPAQUE_NAMES = frozenset({"trusted.overlay.opaque", "user.overlay.opaque"})


def _unsafe(key: str, why: str) -> UnsafeArchive:
    return UnsafeArchive(f"{key!r}: {why}", detail={"entry": key})


def verify_layout(root: Path, *, allow_devices: bool = False) -> None:
    """Raise UnsafeArchive naming the first path under ``root`` that breaks an invariant.

    Checked for every entry, without following any symlink:

    * it lives on the root's filesystem (no mount point or foreign device inside);
    * a symlink's target does not climb above the root (absolute targets are
      root-relative and legal), and no symlink has a second hard link;
    * a regular file with several links has all of them inside the root (an
      inode shared with a file outside would let the job write host files);
    * no character or block device, unless ``allow_devices``; the 0/0 character
      device (an overlayfs whiteout) is always allowed;
    * setuid only on regular files, setgid only on regular files and directories;
    * no ``.wh.*`` file (whiteouts are consumed by the unpacker);
    * no overlayfs metadata xattrs except ``overlay.opaque=y`` on directories.

    Run it on a freshly unpacked tree, before overlayfs has been mounted on it
    (overlayfs itself adds ``trusted.overlay.*`` xattrs to upper directories).
    """
    tree = Tree(Path(root))
    try:
        root_dev = os.fstat(tree.root_fd).st_dev
        _check_xattrs(tree.root_fd, None, "", True)
        multi: dict[int, tuple[int, str]] = {}  # inode of a multiply linked file -> (st_nlink, first path)
        seen: Counter[int] = Counter()
        todo: list[str] = [""]
        while todo:
            dkey = todo.pop()
            found = tree.resolve_dir(dkey, repr(dkey), follow=False, create=False)
            if found is None:
                raise _unsafe(dkey, "directory vanished during verification")
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=found[0])
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        key = join(dkey, entry.name)
                        st = entry.stat(follow_symlinks=False)
                        if _check_entry(fd, entry.name, key, st, root_dev, allow_devices):
                            todo.append(key)
                        elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                            multi.setdefault(st.st_ino, (st.st_nlink, key))
                            seen[st.st_ino] += 1
            finally:
                os.close(fd)
        for ino, (nlink, first) in multi.items():
            if seen[ino] != nlink:
                raise _unsafe(first, f"has {nlink} hard links but only {seen[ino]} inside the root")
    finally:
        tree.close()


def _check_entry(dir_fd: int, name: str, key: str, st: os.stat_result, root_dev: int,
                 allow_devices: bool) -> bool:
    """Check one entry; True when it is a directory to descend into."""
    mode = st.st_mode
    if st.st_dev != root_dev:
        raise _unsafe(key, "is on another filesystem (a mount point inside the root)")
    if name.startswith(WHITEOUT_PREFIX):
        raise _unsafe(key, "a whiteout file was left in the tree")
    is_dir = stat.S_ISDIR(mode)
    if mode & stat.S_ISUID and not stat.S_ISREG(mode):
        raise _unsafe(key, "setuid bit on something that is not a regular file")
    if mode & stat.S_ISGID and not (stat.S_ISREG(mode) or is_dir):
        raise _unsafe(key, "setgid bit on something that is neither a regular file nor a directory")
    if stat.S_ISLNK(mode):
        target = os.readlink(name, dir_fd=dir_fd)
        if symlink_escapes(key.rpartition("/")[0], target):
            raise _unsafe(key, f"symlink target {target!r} climbs above the root")
        if st.st_nlink > 1:
            raise _unsafe(key, "a symlink with more than one hard link")
        return False
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        if not (is_whiteout_device(st) or allow_devices):
            raise _unsafe(key, f"device node {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} "
                               "(allow_devices is off)")
        return False  # a device's xattrs cannot be read without opening the node
    _check_xattrs(dir_fd, name, key, is_dir)
    return is_dir


def _check_xattrs(dir_fd: int, name: str | None, key: str, is_dir: bool) -> None:
    # /proc/self/fd/N resolves to our own directory fd; the final name is never followed.
    path: int | str = dir_fd if name is None else f"/proc/self/fd/{dir_fd}/{name}"
    try:
        names = os.listxattr(path, follow_symlinks=isinstance(path, int))
    except OSError:
        return  # fifos, or a filesystem without xattrs: nothing to inspect
    for xname in names:
        if not xname.startswith(("trusted.overlay.", "user.overlay.")):
            continue
        if xname in _OPAQUE_NAMES and is_dir and os.getxattr(path, xname, follow_symlinks=isinstance(path, int)) == b"y":
            continue
        raise _unsafe(key or "/", f"carries overlayfs metadata xattr {xname!r}")
