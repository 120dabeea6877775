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

__all__ = ["CHUNK_BYTES", "EntryKind", "UploadEntry", "check_local", "walk_local"]

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
    size: int = 0        # files: exact number of data bytes that follow
    target: str = ""     # symlinks


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
               on_skip: Callable[[str, str], None] | None = None) -> Iterator[tuple[UploadEntry | None, bytes]]:
    """Stream local files and directories as upload items, each path under its own base name.

    Symlinks (including a symlink given on the command line) are sent as symlinks, never
    followed; sockets, FIFOs and device nodes are skipped (``on_skip(path, why)``). Files are
    read in :data:`CHUNK_BYTES` pieces, so nothing is ever held whole in memory.
    """
    for local, name in check_local(paths):
        yield from _walk_one(local, name, on_skip)


def _walk_one(local: str, name: str,
              on_skip: Callable[[str, str], None] | None) -> Iterator[tuple[UploadEntry | None, bytes]]:
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
            yield from _file_items(path, rel, st)
        elif stat.S_ISDIR(st.st_mode):
            yield UploadEntry(rel, EntryKind.DIR, stat.S_IMODE(st.st_mode)), b""
            with os.scandir(path) as it:
                children = sorted(it, key=lambda e: e.name)
            # Reversed onto the stack so entries go out in name order, each directory before its contents.
            for child in reversed(children):
                stack.append((child.path, f"{rel}/{child.name}", child.stat(follow_symlinks=False)))
        elif on_skip is not None:
            on_skip(path, "not a regular file, directory or symlink")


def _file_items(path: str, rel: str, st: os.stat_result) -> Iterator[tuple[UploadEntry | None, bytes]]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        entry: UploadEntry | None = UploadEntry(rel, EntryKind.FILE, stat.S_IMODE(st.st_mode), size)
        left = size
        while True:
            chunk = os.read(fd, min(CHUNK_BYTES, left)) if left else b""
            if left and not chunk:
                raise InvalidArgument(f"--upload: {path} shrank while it was being read")
            left -= len(chunk)
            if entry is not None or chunk:
                yield entry, chunk
            entry = None
            if not left:
                return
    finally:
        os.close(fd)
