"""A snapshot's own changes as an OCI layer tar (the reverse of ``capsa.images.unpack``).

The overlay snapshotter keeps a layer's changes in its upper directory, in overlayfs's own
format; OCI layers say the same things differently (image-spec layer.md), so on the way out:

* a character device 0/0 (overlayfs whiteout) becomes an empty regular file ``.wh.NAME``;
* a directory carrying ``trusted.overlay.opaque=y`` (``user.overlay.opaque`` under
  ``userxattr``) becomes the directory plus an empty ``DIR/.wh..wh..opq``;
* other ``*.overlay.*`` xattrs are overlayfs bookkeeping: ``redirect`` and ``metacopy``
  would change what a path means, and capsa mounts without them, so meeting one is an error
  rather than a silently wrong layer.

Everything else is written as it is: regular files (hardlinks inside the layer as tar
hardlinks), directories (parents before children), symlinks (targets verbatim), fifos, and the
xattrs an image may carry (``user.*``, POSIX ACLs, ``security.capability``). Device nodes
other than whiteouts are left out and counted: a job's ``/dev`` is provided by the runtime,
and capsa's unpacker refuses device nodes in layers anyway.

Paths are walked with ``os.scandir`` (never following symlinks); nothing is read through a
symlink. The tar is streamed into ``out`` (e.g. a content-store writer, which hashes it while
it is written), so the layer's digest is its diff ID.
"""

from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from capsa.errors import Unsupported

__all__ = ["ExportStats", "export_tree"]

_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
_OVERLAY_PREFIXES = ("trusted.overlay.", "user.overlay.")
_KEPT_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")
_CHUNK = 1 << 20


class _Sink(Protocol):
    def write(self, data: bytes) -> int: ...


@dataclass
class ExportStats:
    entries: int = 0
    bytes: int = 0
    whiteouts: int = 0
    skipped_devices: int = 0


class _Writer:
    """Adapts any ``write``-only sink (a content-store Writer) to what tarfile's stream mode needs."""

    def __init__(self, sink: _Sink) -> None:
        self.sink = sink

    def write(self, data: bytes) -> int:
        self.sink.write(data)
        return len(data)


def export_tree(tree: Path, out: _Sink | BinaryIO, *, overlay: bool,
                skip: frozenset[str] = frozenset()) -> ExportStats:
    """Write ``tree`` as a layer tar to ``out``.

    ``overlay``: ``tree`` is an overlay upper directory (convert whiteouts and opaque
    directories); otherwise it is a complete root (every entry is content). ``skip`` names
    top-level relative paths to leave out entirely (with everything under them).
    """
    stats = ExportStats()
    inodes: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=_Writer(out), mode="w|", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                      bufsize=_CHUNK) as tar:
        root_fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _walk(tar, root_fd, "", overlay, skip, stats, inodes)
        finally:
            os.close(root_fd)
    return stats


def _walk(tar: tarfile.TarFile, dir_fd: int, prefix: str, overlay: bool, skip: frozenset[str],
          stats: ExportStats, inodes: dict[tuple[int, int], str]) -> None:
    with os.scandir(dir_fd) as it:
        names = sorted(e.name for e in it)
    for name in names:
        rel = prefix + name
        if not prefix and name in skip:
            continue
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            if overlay and stat.S_ISCHR(mode) and st.st_rdev == 0:
                _add(tar, _info(_whiteout_name(prefix, name), st, tarfile.REGTYPE, 0o600), stats)
                stats.whiteouts += 1
            else:
                stats.skipped_devices += 1
            continue
        if stat.S_ISDIR(mode):
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                xattrs, opaque = _xattrs(fd, rel, overlay)
                info = _info(rel + "/", st, tarfile.DIRTYPE, stat.S_IMODE(mode))
                _add(tar, info, stats, xattrs)
                if opaque:
                    _add(tar, _info(f"{rel}/.wh..wh..opq", st, tarfile.REGTYPE, 0o600), stats)
                    stats.whiteouts += 1
                _walk(tar, fd, rel + "/", overlay, skip, stats, inodes)
            finally:
                os.close(fd)
        elif stat.S_ISLNK(mode):
            info = _info(rel, st, tarfile.SYMTYPE, 0o777)
            info.linkname = os.readlink(name, dir_fd=dir_fd)
            _add(tar, info, stats)
        elif stat.S_ISFIFO(mode):
            _add(tar, _info(rel, st, tarfile.FIFOTYPE, stat.S_IMODE(mode)), stats)
        elif stat.S_ISREG(mode):
            _regular(tar, dir_fd, name, rel, st, overlay, stats, inodes)
        else:  # sockets: nothing an image can carry
            stats.skipped_devices += 1


def _regular(tar: tarfile.TarFile, dir_fd: int, name: str, rel: str, st: os.stat_result, overlay: bool,
             stats: ExportStats, inodes: dict[tuple[int, int], str]) -> None:
    if st.st_nlink > 1:
        first = inodes.get((st.st_dev, st.st_ino))
        if first is not None:
            info = _info(rel, st, tarfile.LNKTYPE, stat.S_IMODE(st.st_mode))
            info.linkname = first
            _add(tar, info, stats)
            return
        inodes[(st.st_dev, st.st_ino)] = rel
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        xattrs, _ = _xattrs(fd, rel, overlay, regular=True)
        info = _info(rel, st, tarfile.REGTYPE, stat.S_IMODE(st.st_mode))
        info.size = os.fstat(fd).st_size  # the size of what we read, not of an earlier stat
        with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
            _add(tar, info, stats, xattrs, f)
        stats.bytes += info.size
    finally:
        os.close(fd)


def _whiteout_name(prefix: str, name: str) -> str:
    return f"{prefix}.wh.{name}"


def _info(name: str, st: os.stat_result, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = int(st.st_mtime)
    return info


def _add(tar: tarfile.TarFile, info: tarfile.TarInfo, stats: ExportStats,
         xattrs: dict[str, bytes] | None = None, fileobj: BinaryIO | None = None) -> None:
    if xattrs:
        # Binary values survive as surrogate-escaped text: tarfile writes them back byte for byte
        # (hdrcharset=BINARY), which is how GNU tar and containerd store them.
        info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()}
    tar.addfile(info, fileobj)
    stats.entries += 1


def _xattrs(fd: int, rel: str, overlay: bool, *, regular: bool = False) -> tuple[dict[str, bytes], bool]:
    try:
        names = os.listxattr(fd)
    except OSError:
        return {}, False
    kept: dict[str, bytes] = {}
    opaque = False
    for xname in names:
        if xname.startswith(_OVERLAY_PREFIXES):
            if not overlay:
                continue
            if xname in _OPAQUE_XATTRS:
                opaque = os.getxattr(fd, xname) == b"y"
                continue
            if xname.endswith((".origin", ".impure", ".nlink", ".uuid")):
                continue  # hints about lower layers; meaningless once exported
            raise Unsupported(f"{rel}: overlayfs {xname} is set (redirect_dir/metacopy mounts);"
                              " such a layer cannot be exported faithfully")
        if xname.startswith("user.") or xname in _KEPT_XATTRS or (regular and xname == "security.capability"):
            kept[xname] = os.getxattr(fd, xname)
    return kept, opaque
