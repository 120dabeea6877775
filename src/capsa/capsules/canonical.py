"""The canonical tar of a capsule tree, and the sha256 digest that names a version.

The digest must depend on the *content* only, so the same files give the same
digest on any machine, from a directory or from any tar of it. It is the
sha256 of this byte stream (a POSIX pax tar, written by :mod:`tarfile` in
``PAX_FORMAT`` with UTF-8 names):

* one entry per directory, regular file and symlink below the root (the root
  itself has no entry), sorted by the UTF-8 bytes of the relative path;
  directory names end with ``/``;
* every header has uid 0, gid 0, empty uname and gname, mtime 0, devmajor and
  devminor 0; modes are normalised: directories ``0755``, files ``0755`` when
  any execute bit is set and ``0644`` otherwise, symlinks ``0777``;
* a pax extended header appears only where ustar cannot hold a value (names
  or link targets longer than 100 bytes or not ASCII), never a global header;
* the archive ends with tarfile's two zero blocks, padded to 10240 bytes.

Hard links are not represented: each path carries its own content. Pushing a
capsule sends exactly this stream, so a pulled copy is verified by digest.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from capsa.errors import UnsafeArchive

__all__ = ["TreeDigest", "tree_digest", "tree_shape", "write_canonical_tar"]

_COPY_BUFSIZE = 1 << 20


@dataclass(frozen=True)
class TreeDigest:
    digest: str  # "sha256:<hex>"
    size: int  # bytes of regular-file content
    entries: int


class _HashingSink:
    """A write-only file object that hashes (and optionally forwards) what it gets."""

    def __init__(self, forward: BinaryIO | None = None) -> None:
        self.hash = hashlib.sha256()
        self.offset = 0
        self.forward = forward

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        if self.forward is not None:
            self.forward.write(data)
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset


def _entries(root: Path) -> list[tuple[bytes, str, os.stat_result]]:
    """Every path below ``root`` (lstat), sorted by UTF-8 bytes of its relative path."""
    found: list[tuple[bytes, str, os.stat_result]] = []
    pending = [""]
    while pending:
        prefix = pending.pop()
        with os.scandir(root / prefix if prefix else root) as it:
            for entry in it:
                rel = f"{prefix}{entry.name}"
                st = entry.stat(follow_symlinks=False)
                found.append((rel.encode("utf-8"), rel, st))
                if stat.S_ISDIR(st.st_mode):
                    pending.append(rel + "/")
    found.sort(key=lambda item: item[0])
    return found


def _write(root: Path, sink: _HashingSink) -> TreeDigest:
    size = 0
    entries = _entries(root)
    with tarfile.TarFile(
        fileobj=sink,  # type: ignore[arg-type]
        mode="w",
        format=tarfile.PAX_FORMAT,
        encoding="utf-8",
        copybufsize=_COPY_BUFSIZE,
    ) as archive:
        for _key, rel, st in entries:
            info = tarfile.TarInfo(rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if stat.S_ISDIR(st.st_mode):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.type, info.size = tarfile.REGTYPE, st.st_size
                info.mode = 0o755 if st.st_mode & 0o111 else 0o644
                with open(root / rel, "rb") as data:
                    archive.addfile(info, data)
                size += st.st_size
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.mode = tarfile.SYMTYPE, 0o777
                info.linkname = os.readlink(root / rel)
                archive.addfile(info)
            else:
                raise UnsafeArchive(f"{rel!r} in {root} is neither a file, a directory nor a symlink")
    return TreeDigest(f"sha256:{sink.hash.hexdigest()}", size, len(entries))


def tree_digest(root: Path) -> TreeDigest:
    """Digest (and size, entry count) of the tree at ``root``."""
    return _write(root, _HashingSink())


def tree_shape(root: Path) -> tuple[int, int]:
    """(bytes of regular-file content, entry count) of ``root``: stat calls only, no hashing.

    The cheap check a job start can afford on every capsule; a tree that still matches its
    recorded shape may yet have changed bytes, which only :func:`tree_digest` (``verify``) finds.
    """
    entries = _entries(root)
    size = sum(st.st_size for _key, _rel, st in entries if stat.S_ISREG(st.st_mode))
    return size, len(entries)


def write_canonical_tar(root: Path, out: BinaryIO) -> TreeDigest:
    """Write the canonical tar of ``root`` to ``out``; returns what it hashed to."""
    return _write(root, _HashingSink(out))
