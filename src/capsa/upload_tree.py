"""The tree writer shared by uploads and ``capsa cp``: a stream of entries written below an open directory.

Kept apart from :mod:`capsa.jobs.uploads` (the daemon's staging store) so the CLI can write a
copied-out tree with the same checks without importing the jobs package. The rules are in that
module's docstring: relative names without ``.``/``..``, every parent opened ``O_DIRECTORY |
O_NOFOLLOW`` from its parent's fd, files created ``O_CREAT | O_EXCL | O_NOFOLLOW``, symlinks
recreated verbatim, setuid/setgid dropped, directory modes applied last.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from capsa.errors import InvalidArgument, LimitExceeded, UnsafeArchive
from capsa.extents import check_extents, copy_extents
from capsa.upload_items import EntryKind, UploadEntry

__all__ = ["TreeWriter", "UploadLimits", "split_name"]

_MODE_MASK = 0o1777          # permission bits and sticky; never setuid/setgid
_NAME_MAX = 255
_PATH_MAX = 4096
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class UploadLimits:
    max_file_bytes: int = 1 << 30
    max_total_bytes: int = 4 << 30
    max_entries: int = 100_000
    session_ttl_s: float = 3600.0



def split_name(path: str) -> list[str]:
    """The components of an entry name, or UnsafeArchive/InvalidArgument naming the entry."""
    if not path:
        raise InvalidArgument("upload entry with an empty name")
    if "\x00" in path:
        raise UnsafeArchive(f"upload entry {path!r}: names may not contain NUL bytes")
    if path.startswith("/"):
        raise UnsafeArchive(f"upload entry {path!r}: absolute names are refused; names are relative to /work")
    if len(path.encode()) > _PATH_MAX:
        raise InvalidArgument(f"upload entry {path[:64]!r}...: name longer than {_PATH_MAX} bytes")
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafeArchive(f"upload entry {path!r}: empty, '.' and '..' components are refused")
        if len(part.encode()) > _NAME_MAX:
            raise InvalidArgument(f"upload entry {path!r}: component longer than {_NAME_MAX} bytes")
    return parts


class TreeWriter:
    """Writes one upload stream under an open directory; never follows a symlink."""

    def __init__(self, root_fd: int, limits: UploadLimits, *, take_fd: Callable[[], int] | None = None) -> None:
        self.root_fd = root_fd
        self.limits = limits
        self.take_fd = take_fd   # descriptors of entries marked ``passed`` (capsa cp's local fast path)
        self._extents: list[tuple[int, int]] = []   # where the current file's stream data goes
        self._ext_i = self._ext_done = 0
        self.entries = 0
        self.files = self.dirs = self.symlinks = 0
        self.total = 0
        self._fd = -1
        self._entry: UploadEntry | None = None
        self._written = 0
        self._dir_modes: list[tuple[list[str], int]] = []
        self._implicit: set[tuple[str, ...]] = set()   # parents created for an entry, not sent themselves
        self._parent_key: tuple[str, ...] | None = None
        self._parent_fd = -1

    # -- parents ------------------------------------------------------------------------
    def _parent(self, entry: UploadEntry, parts: list[str]) -> int:
        key = tuple(parts)
        if key == self._parent_key:
            return self._parent_fd
        fd = self._walk(entry.path, parts, create=True)
        self._drop_parent()
        self._parent_key, self._parent_fd = key, fd
        return fd

    def _drop_parent(self) -> None:
        if self._parent_fd not in (-1, self.root_fd):
            os.close(self._parent_fd)
        self._parent_key, self._parent_fd = None, -1

    def _walk(self, name: str, parts: list[str], *, create: bool) -> int:
        """An fd for root/parts..., each step opened O_NOFOLLOW (missing ones created 0700 when asked)."""
        fd = self.root_fd
        try:
            for i in range(len(parts)):
                nxt = self._step(name, parts[: i + 1], fd, create=create)
                if fd != self.root_fd:
                    os.close(fd)
                fd = nxt
        except BaseException:
            if fd != self.root_fd:
                os.close(fd)
            raise
        return fd

    def _step(self, name: str, parts: list[str], fd: int, *, create: bool) -> int:
        part = parts[-1]
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as exc:  # ELOOP: a symlink; ENOTDIR: a file
            raise UnsafeArchive(
                f"upload entry {name!r}: {'/'.join(parts)!r} is a symlink or not a directory;"
                " entries may not be placed through it") from exc
        os.mkdir(part, 0o700, dir_fd=fd)
        self._dir_modes.append((list(parts), 0o755))
        self._implicit.add(tuple(parts))
        return os.open(part, _DIR_FLAGS, dir_fd=fd)

    # -- entries -------------------------------------------------------------------------
    def begin(self, entry: UploadEntry) -> None:
        self._finish_file()
        parts = split_name(entry.path)
        if entry.kind not in EntryKind.ALL:
            raise InvalidArgument(f"upload entry {entry.path!r}: unknown type {entry.kind!r}")
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise LimitExceeded(f"upload has more than {self.limits.max_entries} entries (at {entry.path!r})")
        parent = self._parent(entry, parts[:-1])
        name = parts[-1]
        if entry.kind == EntryKind.FILE:
            self._begin_file(entry, parent, name)
        elif entry.kind == EntryKind.DIR:
            self._make_dir(entry, parent, name, parts)
        else:
            self._make_symlink(entry, parent, name)

    def _begin_file(self, entry: UploadEntry, parent: int, name: str) -> None:
        if entry.size < 0:
            raise InvalidArgument(f"upload entry {entry.path!r}: negative size")
        if entry.size > self.limits.max_file_bytes:
            raise LimitExceeded(f"upload entry {entry.path!r} is {entry.size} bytes; the limit per file is"
                                f" {self.limits.max_file_bytes} bytes")
        if self.total + entry.size > self.limits.max_total_bytes:
            raise LimitExceeded(f"upload exceeds the total limit of {self.limits.max_total_bytes} bytes"
                                f" at {entry.path!r}")
        try:
            self._fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                               dir_fd=parent)
        except FileExistsError:
            raise UnsafeArchive(f"upload entry {entry.path!r} already exists in the upload (a duplicate name,"
                                " or a name already taken by a symlink or directory)") from None
        self.total += entry.size
        self.files += 1
        self._entry, self._written = entry, 0
        self._ext_i = self._ext_done = 0
        if entry.passed:
            self._extents = []
            self._copy_passed(entry)
        elif entry.extents is not None:
            self._extents = list(entry.extents)
            check_extents(self._extents, entry.size, entry.path)
        else:
            self._extents = [(0, entry.size)] if entry.size else []

    def _copy_passed(self, entry: UploadEntry) -> None:
        """The file's bytes from the descriptor the other side passed for it, holes kept, in the kernel."""
        if self.take_fd is None:
            raise InvalidArgument(f"upload entry {entry.path!r} is passed as a descriptor, but this copy has"
                                  " no descriptor connection")
        src = self.take_fd()
        try:
            if not stat.S_ISREG(os.fstat(src).st_mode):
                raise InvalidArgument(f"upload entry {entry.path!r}: the passed descriptor is not a regular file")
            copy_extents(src, self._fd, entry.size, entry.path)
        finally:
            os.close(src)

    def _make_dir(self, entry: UploadEntry, parent: int, name: str, parts: list[str]) -> None:
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode) or tuple(parts) not in self._implicit:
                raise UnsafeArchive(f"upload entry {entry.path!r} already exists in the upload") from None
            self._implicit.discard(tuple(parts))   # a second entry for it is a duplicate
        self._dir_modes.append((parts, entry.mode & _MODE_MASK))
        self.dirs += 1

    def _make_symlink(self, entry: UploadEntry, parent: int, name: str) -> None:
        target = entry.target
        if not target or "\x00" in target or len(target.encode()) >= _PATH_MAX:
            raise InvalidArgument(f"upload entry {entry.path!r}: a symlink needs a target without NUL bytes,"
                                  f" shorter than {_PATH_MAX} bytes")
        try:
            os.symlink(target, name, dir_fd=parent)
        except FileExistsError:
            raise UnsafeArchive(f"upload entry {entry.path!r} already exists in the upload") from None
        self.symlinks += 1

    def data(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._fd < 0 or self._entry is None:
            raise InvalidArgument("upload data arrived without a file entry before it")
        if self._written + len(chunk) > self._entry.data_bytes:
            raise InvalidArgument(f"upload entry {self._entry.path!r}: more data than its declared size"
                                  f" ({self._entry.data_bytes} bytes)")
        view = memoryview(chunk)
        while view:   # each piece at its extent's offset: holes between extents are never written
            off, length = self._extents[self._ext_i]
            n = os.pwrite(self._fd, view[:length - self._ext_done], off + self._ext_done)
            view = view[n:]
            self._ext_done += n
            if self._ext_done == length:
                self._ext_i, self._ext_done = self._ext_i + 1, 0
        self._written += len(chunk)

    def _finish_file(self) -> None:
        if self._fd < 0 or self._entry is None:
            return
        entry, fd = self._entry, self._fd
        self._fd, self._entry = -1, None
        try:
            if self._written != entry.data_bytes:
                raise InvalidArgument(f"upload entry {entry.path!r}: got {self._written} bytes, declared"
                                      f" {entry.data_bytes}")
            if entry.extents is not None:
                os.ftruncate(fd, entry.size)   # a trailing hole: the length without writing zeros
            os.fchmod(fd, entry.mode & _MODE_MASK)
        finally:
            os.close(fd)

    def finish(self) -> None:
        self._finish_file()
        self._drop_parent()
        # Deepest first, and the last mode given for a directory wins (explicit after implicit).
        modes: dict[tuple[str, ...], int] = {}
        for parts, mode in self._dir_modes:
            modes[tuple(parts)] = mode
        for parts in sorted(modes, key=len, reverse=True):
            fd = self._walk("/".join(parts), list(parts), create=False)
            try:
                os.fchmod(fd, modes[parts])
            finally:
                os.close(fd)

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._drop_parent()
