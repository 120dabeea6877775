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
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from capsa.errors import Canceled, InvalidArgument, NotFound

# The wire vocabulary and the client-side walker live in capsa.upload_items, which the CLI imports
# without this server-side module; re-exported here for the daemon and existing callers.
from capsa.upload_items import CHUNK_BYTES, EntryKind, UploadEntry, check_local, walk_local
from capsa.upload_tree import TreeWriter as _TreeWriter
from capsa.upload_tree import UploadLimits, split_name

__all__ = [
    "CHUNK_BYTES",
    "EntryKind",
    "UploadEntry",
    "UploadLimits",
    "UploadStore",
    "UploadSummary",
    "check_local",
    "split_name",
    "walk_local",
]

_SESSION = re.compile(r"^[0-9a-f]{32}$")
_READY = "ready"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class UploadSummary:
    session: str
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0



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
