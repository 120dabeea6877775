"""Uploads: files and directories streamed from the client into a job's ``/work``.

The wire format is a stream of items, each an optional *entry header* (path, type,
mode, size, symlink target) and optional *data* for the current file. The client
side (:func:`capsa.upload_items.walk_local`) walks the local tree with ``os.scandir`` without
following symlinks and reads files in chunks; the daemon side
(:class:`UploadStore`) writes the stream into a staging directory keyed by a
random session id, and :meth:`UploadStore.claim` renames the finished tree into
place as the job's work directory before the job starts.

Nothing can be written outside the staging tree (Joblet wrote uploads wherever a
name pointed):

* names are relative, '/'-separated, without empty, ``.`` or ``..`` components;
* every operation is relative to an open directory fd (``openat``-style ``dir_fd``),
  and every parent is opened with ``O_DIRECTORY | O_NOFOLLOW``: a symlink in the
  tree can never be used as a parent of a later entry;
* files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW``: an existing name (a
  duplicate, or a symlink planted by an earlier entry) is refused, never followed;
* a symlink entry is recreated as a symlink with its target verbatim; it is
  resolved only inside the job, against the job's root.

Modes are kept except setuid/setgid (``mode & 0o1777``); directory modes are
applied last, deepest first, so a read-only directory does not block its own
contents. Any failure removes the session's staging directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from capsa.errors import Canceled, InvalidArgument, LimitExceeded, NotFound, UnsafeArchive

# The wire vocabulary and the client-side walker live in capsa.upload_items, which the CLI imports
# without this server-side module; re-exported here for the daemon and existing callers.
from capsa.upload_items import CHUNK_BYTES, EntryKind, UploadEntry, check_local, walk_local

__all__ = [
    "CHUNK_BYTES",
    "EntryKind",
    "UploadEntry",
    "UploadLimits",
    "UploadStore",
    "UploadSummary",
    "check_local",
    "walk_local",
]

_MODE_MASK = 0o1777          # permission bits and sticky; never setuid/setgid
_NAME_MAX = 255
_PATH_MAX = 4096
_SESSION = re.compile(r"^[0-9a-f]{32}$")
_READY = "ready"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class UploadLimits:
    max_file_bytes: int = 1 << 30
    max_total_bytes: int = 4 << 30
    max_entries: int = 100_000
    session_ttl_s: float = 3600.0


@dataclass(frozen=True)
class UploadSummary:
    session: str
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0


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


class _TreeWriter:
    """Writes one upload stream under an open directory; never follows a symlink."""

    def __init__(self, root_fd: int, limits: UploadLimits) -> None:
        self.root_fd = root_fd
        self.limits = limits
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
        if self._written + len(chunk) > self._entry.size:
            raise InvalidArgument(f"upload entry {self._entry.path!r}: more data than its declared size"
                                  f" ({self._entry.size} bytes)")
        view = memoryview(chunk)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._written += len(chunk)

    def _finish_file(self) -> None:
        if self._fd < 0 or self._entry is None:
            return
        entry, fd = self._entry, self._fd
        self._fd, self._entry = -1, None
        try:
            if self._written != entry.size:
                raise InvalidArgument(f"upload entry {entry.path!r}: got {self._written} bytes, declared"
                                      f" {entry.size}")
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


class UploadStore:
    """Staged upload sessions under ``root`` (``CAPSA_HOME/tmp/uploads``), each claimed at most once."""

    def __init__(self, root: Path, limits: UploadLimits | None = None) -> None:
        self.root = Path(root)
        self.limits = limits or UploadLimits()
        self._active: set[str] = set()
        self._lock = threading.Lock()

    def _session_dir(self, session: str) -> Path:
        if not _SESSION.match(session or ""):
            raise InvalidArgument(f"invalid upload session id {session!r}")
        return self.root / session

    def receive(self, items: Iterable[tuple[UploadEntry | None, bytes]], *,
                complete: Callable[[], bool] | None = None) -> UploadSummary:
        """Write one stream into a new session; on any error nothing of it is left.

        ``complete`` is asked once the items are exhausted: a transport may end a canceled
        stream as if it had finished, so the API requires an explicit end marker.
        """
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        session = secrets.token_hex(16)
        sdir = self.root / session
        with self._lock:
            self._active.add(session)
        try:
            sdir.mkdir(mode=0o700)
            (sdir / "tree").mkdir(mode=0o700)
            root_fd = os.open(sdir / "tree", _DIR_FLAGS)
            writer = _TreeWriter(root_fd, self.limits)
            try:
                for entry, data in items:
                    if entry is not None:
                        writer.begin(entry)
                    writer.data(data)
                if complete is not None and not complete():
                    raise Canceled("the upload stream ended without its end marker (canceled?): discarded")
                writer.finish()
            finally:
                writer.abort()
                os.close(root_fd)
            # The marker's mtime is the session's age for cleanup.
            (sdir / _READY).touch(mode=0o600)
        except BaseException:
            shutil.rmtree(sdir, ignore_errors=True)
            raise
        finally:
            with self._lock:
                self._active.discard(session)
        return UploadSummary(session=session, files=writer.files, dirs=writer.dirs, symlinks=writer.symlinks,
                             bytes=writer.total)

    def stage_copy(self, tree: Path) -> str:
        """A new finished session holding a copy of ``tree``: a workflow keeps its jobs' uploads until they start."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        session = secrets.token_hex(16)
        sdir = self.root / session
        with self._lock:
            self._active.add(session)   # cleanup must not take a session still being copied
        try:
            sdir.mkdir(mode=0o700)
            shutil.copytree(tree, sdir / "tree", symlinks=True)
            (sdir / _READY).touch(mode=0o600)
        except BaseException:
            shutil.rmtree(sdir, ignore_errors=True)
            raise
        finally:
            with self._lock:
                self._active.discard(session)
        return session

    def claim(self, session: str, dest: Path) -> None:
        """Move a finished session's tree to ``dest`` (which must not exist yet); once only."""
        sdir = self._session_dir(session)
        if not (sdir / _READY).is_file():
            raise NotFound(f"upload session {session} does not exist (expired, failed, or already used)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(sdir / "tree", dest)
        except FileNotFoundError:
            raise NotFound(f"upload session {session} was already used") from None
        os.chmod(dest, 0o755)   # the job's /work itself
        shutil.rmtree(sdir, ignore_errors=True)

    def discard(self, session: str) -> None:
        shutil.rmtree(self._session_dir(session), ignore_errors=True)

    def cleanup(self, *, now: float | None = None) -> list[str]:
        """Remove sessions nobody claimed within the TTL, and unfinished ones no stream is writing."""
        now = time.time() if now is None else now
        removed: list[str] = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return removed
        with self._lock:
            active = set(self._active)
        for entry in entries:
            if entry.name in active:
                continue
            try:
                ready = os.stat(os.path.join(entry.path, _READY), follow_symlinks=False)
            except FileNotFoundError:
                ready = None
            except NotADirectoryError:
                ready = None
            if ready is not None and now - ready.st_mtime < self.limits.session_ttl_s:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            removed.append(entry.name)
        return removed
