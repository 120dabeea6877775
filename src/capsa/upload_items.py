"""Upload items as the client sends them: the wire vocabulary and the local tree walker.

Shared by the client (``capsa run --upload``, :meth:`capsa.api.client.CapsaClient.upload_paths`)
and the daemon's :mod:`capsa.jobs.uploads`, which writes the stream into a job's ``/work``. Kept
apart from it so the CLI does not import server-side code; see that module for the rules the
daemon enforces on every entry.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from capsa.errors import InvalidArgument, NotFound

__all__ = ["CHUNK_BYTES", "EntryKind", "UploadEntry", "check_local", "file_items", "walk_local"]

CHUNK_BYTES = 1 << 20


class EntryKind:
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    ALL = (FILE, DIR, SYMLINK)


@dataclass(frozen=True)
class UploadEntry:
    path: str            # relative to /work, '/'-separated
    kind: str            # EntryKind
    mode: int = 0o644
    size: int = 0        # files: their length (apparent size, holes included)
    target: str = ""     # symlinks
    # files: (offset, length) of the data that follows when the file has holes (None: all ``size``
    # bytes follow); ``passed``: no data follows, the file comes as a descriptor (capsa.fdpass).
    extents: tuple[tuple[int, int], ...] | None = None
    passed: bool = False

    @property
    def data_bytes(self) -> int:
        """How many bytes of this entry travel in the stream."""
        if self.kind != EntryKind.FILE or self.passed:
            return 0
        return self.size if self.extents is None else sum(length for _, length in self.extents)


def check_local(paths: Iterable[str | os.PathLike[str]]) -> list[tuple[str, str]]:
    """(local path, name in /work) of each path to upload; every error is raised before anything is sent."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for raw in paths:
        local = os.fspath(raw)
        name = os.path.basename(os.path.normpath(os.path.abspath(local)))
        if not name or name in (".", ".."):
            raise InvalidArgument(f"--upload {local!r}: cannot upload the root directory; name a file or folder")
        if name in seen:
            raise InvalidArgument(f"--upload {local!r}: another upload already uses the name {name!r} in /work")
        if not os.path.lexists(local):
            raise NotFound(f"--upload {local!r}: no such file or directory")
        seen.add(name)
        out.append((local, name))
    return out


def walk_local(paths: Iterable[str | os.PathLike[str]], *,
               on_skip: Callable[[str, str], None] | None = None, sparse: bool = False,
               send_fd: Callable[[int], None] | None = None) -> Iterator[tuple[UploadEntry | None, bytes]]:
    """Stream local files and directories as upload items, each path under its own base name.

    Symlinks (including a symlink given on the command line) are sent as symlinks, never
    followed; sockets, FIFOs and device nodes are skipped (``on_skip(path, why)``). Files are
    read in :data:`CHUNK_BYTES` pieces, so nothing is ever held whole in memory. ``sparse`` sends
    only the data extents of files with holes (receivers that understand ``extents``: capsa cp);
    ``send_fd`` passes large files as descriptors instead (see :func:`file_items`).
    """
    for local, name in check_local(paths):
        yield from _walk_one(local, name, on_skip, sparse, send_fd)


def _walk_one(local: str, name: str, on_skip: Callable[[str, str], None] | None, sparse: bool,
              send_fd: Callable[[int], None] | None) -> Iterator[tuple[UploadEntry | None, bytes]]:
    try:
        st = os.lstat(local)
    except FileNotFoundError:
        raise NotFound(f"--upload {local!r}: no such file or directory") from None
    stack: list[tuple[str, str, os.stat_result]] = [(local, name, st)]
    while stack:
        path, rel, st = stack.pop()
        if stat.S_ISLNK(st.st_mode):
            yield UploadEntry(rel, EntryKind.SYMLINK, 0o777, 0, os.readlink(path)), b""
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                yield from file_items(fd, rel, stat.S_IMODE(st.st_mode), os.fstat(fd).st_size, sparse=sparse,
                                      send_fd=send_fd, shrank=InvalidArgument, shown=path)
            finally:
                os.close(fd)
        elif stat.S_ISDIR(st.st_mode):
            yield UploadEntry(rel, EntryKind.DIR, stat.S_IMODE(st.st_mode)), b""
            with os.scandir(path) as it:
                children = sorted(it, key=lambda e: e.name)
            # Reversed onto the stack so entries go out in name order, each directory before its contents.
            for child in reversed(children):
                stack.append((child.path, f"{rel}/{child.name}", child.stat(follow_symlinks=False)))
        elif on_skip is not None:
            on_skip(path, "not a regular file, directory or symlink")


def file_items(fd: int, rel: str, mode: int, size: int, *, sparse: bool, send_fd: Callable[[int], None] | None,
               shrank: type[Exception], shown: str) -> Iterator[tuple[UploadEntry | None, bytes]]:
    """Items of one open regular file: passed as a descriptor (``send_fd``, files of at least
    FAST_MIN_BYTES), else its data extents (``sparse``) or all its bytes, read with pread.

    The descriptor is sent *before* the entry is yielded, so a receiver that takes one descriptor
    per passed entry, in stream order, always finds it waiting.
    """
    from capsa.fdpass import FAST_MIN_BYTES

    if send_fd is not None and size >= FAST_MIN_BYTES:
        send_fd(fd)
        yield UploadEntry(rel, EntryKind.FILE, mode, size, passed=True), b""
        return
    extents: list[tuple[int, int]] = [(0, size)] if size else []
    if sparse:
        from capsa.extents import data_extents

        found = data_extents(fd, size)
        if sum(length for _, length in found) < size:
            extents = found
    entry: UploadEntry | None = UploadEntry(rel, EntryKind.FILE, mode, size,
                                            extents=tuple(extents) if extents != [(0, size)] and size else None)
    for off, length in extents:
        pos, end = off, off + length
        while pos < end:
            chunk = os.pread(fd, min(CHUNK_BYTES, end - pos), pos)
            if not chunk:
                raise shrank(f"{shown}: shrank while it was being copied (it was changed); retry")
            pos += len(chunk)
            yield entry, chunk
            entry = None
    if entry is not None:
        yield entry, b""
