"""The content store: blobs by digest, written through resumable ingests.

Shaped after containerd's local content store (STYLE.md):

* Writing is separate from publishing. :meth:`ContentStore.writer` opens (or
  reopens) an *ingest* named by a caller-chosen ``ref`` at
  ``root/ingest/<sha256(ref)>/data``. :meth:`Writer.write` appends and hashes in
  the same pass (image ADR-007). An ingest outlives the process: reopening the
  same ref after a crash or ``kill -9`` resumes at the current file size, with
  the hash state rebuilt by reading back the bytes already there.
* :meth:`Writer.commit` is the only way into ``root/blobs/sha256/<hex>``: fsync,
  verify size and digest, make the file read-only, rename atomically, fsync the
  directory, then record the blob in SQLite. A mismatch raises ChecksumMismatch
  and deletes the ingest, so nothing of a corrupt blob is kept. Committing a
  digest that is already stored is a no-op (dedupe).
* Readers open blobs by digest only.

The files are the truth, the ``content_blobs`` table is metadata about them
(media type, when stored): a crash between the rename and the insert leaves a
blob without a row, which :meth:`ContentStore.info` and :meth:`ContentStore.walk`
repair from ``stat``; a row whose file is gone is dropped the same way.

One writer per ref at a time, across processes (``flock`` on the ingest's lock
file, released by the kernel if the holder dies); a second writer gets
Unavailable, which is retryable.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from capsa.errors import (
    Canceled,
    ChecksumMismatch,
    FailedPrecondition,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    Timeout,
    Unavailable,
)
from capsa.images.oci import Digest
from capsa.state.db import Database

__all__ = [
    "DEFAULT_MAX_BLOB_SIZE",
    "BlobInfo",
    "ContentStore",
    "IngestInfo",
    "ProgressFn",
    "Writer",
    "copy_to_store",
    "digest_file",
]

# ADR-005: 10 GiB per image; no single blob of an acceptable image can be larger.
DEFAULT_MAX_BLOB_SIZE = 10 * 1024**3
_READ_CHUNK = 1024 * 1024

ProgressFn = Callable[[int, "int | None"], None]
"""Called as ``progress(bytes_so_far, total_or_None)``; bytes include a resumed offset."""

_MIGRATIONS = [
    """
    CREATE TABLE content_blobs (
        digest     TEXT PRIMARY KEY,
        size       INTEGER NOT NULL,
        media_type TEXT,
        created    REAL NOT NULL
    );
    CREATE TABLE content_hints (
        hint     TEXT PRIMARY KEY,
        digest   TEXT NOT NULL,
        recorded REAL NOT NULL
    );
    CREATE INDEX content_hints_digest ON content_hints(digest);
    """,
]


@dataclass(frozen=True)
class BlobInfo:
    digest: Digest
    size: int
    media_type: str | None
    created: float  # unix time the blob was committed


@dataclass(frozen=True)
class IngestInfo:
    ref: str
    offset: int  # bytes written so far
    expected: Digest | None
    expected_size: int | None
    started: float  # unix time the ingest was first opened
    updated: float  # unix time of the last write
    locked: bool  # a live writer holds it

    @property
    def age(self) -> float:
        """Seconds since the last write."""
        return max(0.0, time.time() - self.updated)


class ContentStore:
    """Blobs under ``root/blobs/sha256``, ingests under ``root/ingest``, metadata in ``db``."""

    def __init__(self, root: Path, db: Database, *, max_blob_size: int = DEFAULT_MAX_BLOB_SIZE) -> None:
        self.root = Path(root)
        self.db = db
        self.max_blob_size = max_blob_size
        self._blobs = self.root / "blobs" / "sha256"
        self._ingest = self.root / "ingest"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._ingest.mkdir(parents=True, exist_ok=True)
        db.migrate("content", _MIGRATIONS)

    # -- reading -------------------------------------------------------------------------
    def path(self, digest: Digest | str) -> Path:
        """Where the blob lives (whether or not it exists)."""
        return self._blobs / Digest(digest).hex

    def exists(self, digest: Digest | str) -> bool:
        return self.path(digest).is_file()

    def info(self, digest: Digest | str) -> BlobInfo:
        digest = Digest(digest)
        try:
            st = self.path(digest).stat()
        except FileNotFoundError:
            self.db.execute("DELETE FROM content_blobs WHERE digest = ?", (digest,))
            raise NotFound(f"blob {digest} is not in the content store") from None
        row = self.db.query_one("SELECT size, media_type, created FROM content_blobs WHERE digest = ?", (digest,))
        if row is None:  # a crash between the blob's rename and its record
            return self._record(digest, st.st_size, None, st.st_mtime)
        # The recorded size is the committed one: a file of another size is damaged, not the
        # record stale (one digest, one content), so callers comparing the two see it.
        return BlobInfo(digest, int(row["size"]), row["media_type"], float(row["created"]))

    def open(self, digest: Digest | str) -> BinaryIO:
        digest = Digest(digest)
        try:
            return open(self.path(digest), "rb")  # noqa: SIM115 - the caller owns the file
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the content store") from None

    def read_bytes(self, digest: Digest | str, *, limit: int) -> bytes:
        """A small blob (manifest, config) whole; LimitExceeded past ``limit`` bytes."""
        with self.open(digest) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise LimitExceeded(f"blob {digest} is larger than {limit} bytes")
        return data

    def verify(self, digest: Digest | str) -> BlobInfo:
        """Re-hash a stored blob; a corrupted one is deleted and reported as ChecksumMismatch.

        For callers that must check real state before trusting a blob (image ADR-006).
        """
        info = self.info(digest)
        actual, size = digest_file(self.path(info.digest))
        if actual != info.digest or size != info.size:
            with contextlib.suppress(NotFound):
                self.delete(info.digest)
            raise ChecksumMismatch(
                f"stored blob {info.digest} is corrupt (hashes to {actual}, {size} bytes); it was removed",
                detail={"expected": info.digest, "actual": actual},
            )
        return info

    def walk(self) -> Iterator[BlobInfo]:
        """Every stored blob, repairing metadata rows that disagree with the files."""
        rows = {r["digest"]: r for r in self.db.query("SELECT digest, size, media_type, created FROM content_blobs")}
        seen: set[str] = set()
        for entry in sorted(os.scandir(self._blobs), key=lambda e: e.name):
            try:
                digest = Digest.from_hex(entry.name)
                st = entry.stat(follow_symlinks=False)
            except (InvalidArgument, FileNotFoundError):
                continue  # not ours (or deleted meanwhile)
            seen.add(digest)
            row = rows.get(digest)
            if row is None:
                yield self._record(digest, st.st_size, None, st.st_mtime)
            else:
                yield BlobInfo(digest, int(row["size"]), row["media_type"], float(row["created"]))
        gone = [d for d in rows if d not in seen]
        if gone:
            with self.db.tx() as conn:
                conn.executemany("DELETE FROM content_blobs WHERE digest = ?", [(d,) for d in gone])

    def delete(self, digest: Digest | str) -> None:
        digest = Digest(digest)
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the content store") from None
        finally:
            self.db.execute("DELETE FROM content_blobs WHERE digest = ?", (digest,))
        _fsync_dir(self._blobs)

    def usage(self) -> tuple[int, int]:
        """(bytes in blobs, bytes in ingests)."""
        blobs = sum(e.stat().st_size for e in os.scandir(self._blobs) if e.is_file(follow_symlinks=False))
        ingests = sum(i.offset for i in self.ingests())
        return blobs, ingests

    # -- pre-hash dedupe hints -------------------------------------------------------------
    def record_hint(self, hint: str, digest: Digest | str) -> None:
        """Remember that a source object known by ``hint`` (e.g. S3 ETag+size) hashed to ``digest``."""
        self.db.execute(
            "INSERT INTO content_hints(hint, digest, recorded) VALUES(?, ?, ?)"
            " ON CONFLICT(hint) DO UPDATE SET digest = excluded.digest, recorded = excluded.recorded",
            (hint, Digest(digest), time.time()),
        )

    def lookup_hint(self, hint: str) -> Digest | None:
        """The digest ``hint`` hashed to before, if that blob is still stored."""
        row = self.db.query_one("SELECT digest FROM content_hints WHERE hint = ?", (hint,))
        if row is None:
            return None
        digest = Digest(row["digest"])
        return digest if self.exists(digest) else None

    # -- writing -----------------------------------------------------------------------------
    def writer(self, ref: str, *, expected: Digest | str | None = None, expected_size: int | None = None) -> Writer:
        """Open the ingest named ``ref``, resuming it if it exists.

        A leftover ingest whose recorded expectation differs from this one, or that is
        already longer than ``expected_size``, holds other content and is restarted.
        """
        if not ref or len(ref) > 4096 or "\0" in ref:
            raise InvalidArgument("ingest ref must be a non-empty string without NUL, at most 4096 characters")
        expected = Digest(expected) if expected is not None else None
        if expected_size is not None:
            if expected_size < 0:
                raise InvalidArgument(f"expected size {expected_size} is negative")
            if expected_size > self.max_blob_size:
                raise LimitExceeded(
                    f"blob {expected or ref} is {expected_size} bytes, over the {self.max_blob_size}-byte blob limit"
                )
        directory = self._ingest_dir(ref)
        lock_fd = _lock(directory, ref)
        try:
            return Writer(self, ref, directory, lock_fd, expected, expected_size)
        except BaseException:
            os.close(lock_fd)
            raise

    def put_bytes(self, data: bytes, *, expected: Digest | str | None = None, media_type: str | None = None) -> BlobInfo:
        """Store a small in-memory blob (manifest, config) with the same guarantees."""
        ref = "put-" + hashlib.sha256(data).hexdigest()
        with self.writer(ref, expected=expected, expected_size=len(data)) as w:
            if w.offset:
                w.truncate(0)
            w.write(data)
            return w.commit(len(data), expected, media_type=media_type)

    # -- ingests ------------------------------------------------------------------------------
    def ingests(self) -> list[IngestInfo]:
        """Leftover and active ingests, oldest write first."""
        out: list[IngestInfo] = []
        for entry in os.scandir(self._ingest):
            info = _read_ingest(Path(entry.path))
            if info is not None:
                out.append(info)
        return sorted(out, key=lambda i: i.updated)

    def abort(self, ref: str) -> None:
        """Delete the ingest ``ref``; Unavailable while a writer holds it."""
        directory = self._ingest_dir(ref)
        if not directory.exists():
            raise NotFound(f"no ingest named {ref!r}")
        lock_fd = _lock(directory, ref)
        try:
            shutil.rmtree(directory, ignore_errors=True)
        finally:
            os.close(lock_fd)

    def prune_ingests(self, older_than: float) -> list[IngestInfo]:
        """Delete ingests not written for ``older_than`` seconds and not held by a writer."""
        removed: list[IngestInfo] = []
        for info in self.ingests():
            if info.locked or info.age < older_than:
                continue
            with contextlib.suppress(Unavailable, NotFound):
                self.abort(info.ref)
                removed.append(info)
        return removed

    # -- internals ----------------------------------------------------------------------------
    def _ingest_dir(self, ref: str) -> Path:
        return self._ingest / hashlib.sha256(ref.encode()).hexdigest()

    def _record(self, digest: Digest, size: int, media_type: str | None, created: float) -> BlobInfo:
        with self.db.tx() as conn:
            conn.execute(
                "INSERT INTO content_blobs(digest, size, media_type, created) VALUES(?, ?, ?, ?)"
                " ON CONFLICT(digest) DO UPDATE SET size = excluded.size,"
                " media_type = COALESCE(content_blobs.media_type, excluded.media_type)",
                (digest, size, media_type, created),
            )
            row = conn.execute("SELECT media_type, created FROM content_blobs WHERE digest = ?", (digest,)).fetchone()
        return BlobInfo(digest, size, row["media_type"], float(row["created"]))

    def _publish(self, ingest_data: Path, digest: Digest, size: int, media_type: str | None) -> BlobInfo:
        target = self.path(digest)
        # Always rename, also over an existing file: that one may be the damaged copy being
        # repaired (an intact one holds the same bytes). Atomic: readers see one or the other.
        os.rename(ingest_data, target)
        _fsync_dir(self._blobs)
        return self._record(digest, size, media_type, time.time())


class Writer:
    """An open ingest: append with :meth:`write`, publish with :meth:`commit`.

    Closing without committing (``with`` block exit, :meth:`close`) keeps the ingest
    for a later resume; :meth:`abort` discards it.
    """

    def __init__(
        self, store: ContentStore, ref: str, directory: Path, lock_fd: int,
        expected: Digest | None, expected_size: int | None,
    ) -> None:
        self._store = store
        self.ref = ref
        self._dir = directory
        self._lock_fd: int | None = lock_fd
        self.expected = expected
        self.expected_size = expected_size
        self._data = directory / "data"
        meta = _read_meta(directory)
        restart = meta is not None and (
            (expected is not None and meta.get("expected") not in (None, expected))
            or (expected_size is not None and meta.get("expected_size") not in (None, expected_size))
        )
        self._fd: int | None = os.open(self._data, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        size = os.fstat(self._fd).st_size
        if restart or (expected_size is not None and size > expected_size) or size > store.max_blob_size:
            os.ftruncate(self._fd, 0)
            size = 0
        started = float(meta["started"]) if meta and not restart else time.time()
        _write_meta(directory, {"ref": ref, "expected": expected, "expected_size": expected_size, "started": started})
        self._hash = hashlib.sha256()
        self._offset = 0
        self._rehash(size)

    # -- state ---------------------------------------------------------------------------
    @property
    def offset(self) -> int:
        """Bytes written so far (where a resumed download must start)."""
        return self._offset

    def digest(self) -> Digest:
        """The digest of the bytes written so far."""
        return Digest.from_hex(self._hash.hexdigest())

    # -- writing -------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> int:
        fd = self._require_open()
        view = memoryview(data)
        end = self._offset + len(view)
        if self.expected_size is not None and end > self.expected_size:
            what = self.expected or self.ref
            self.abort()
            raise ChecksumMismatch(
                f"blob {what}: received more than the expected {self.expected_size} bytes; nothing was kept",
                detail={"expected_size": self.expected_size, "received_at_least": end},
            )
        if end > self._store.max_blob_size:
            what = self.expected or self.ref
            self.abort()
            raise LimitExceeded(f"blob {what} exceeds the {self._store.max_blob_size}-byte blob limit")
        self._hash.update(view)
        written = 0
        while written < len(view):
            written += os.write(fd, view[written:])
        self._offset = end
        return len(view)

    def truncate(self, size: int) -> None:
        """Cut the ingest back to ``size`` bytes (0 restarts it), rebuilding the hash."""
        fd = self._require_open()
        if not 0 <= size <= self._offset:
            raise InvalidArgument(f"cannot truncate ingest {self.ref!r} of {self._offset} bytes to {size}")
        os.ftruncate(fd, size)
        self._hash = hashlib.sha256()
        self._offset = 0
        self._rehash(size)

    def commit(self, size: int | None = None, expected: Digest | str | None = None, *, media_type: str | None = None) -> BlobInfo:
        """Verify and publish the blob; returns its info.

        ``size`` and ``expected`` (when given) are checked in addition to the ones
        the writer was opened with. On any mismatch the ingest is deleted and
        ChecksumMismatch names the expected and actual values.
        """
        fd = self._require_open()
        os.fsync(fd)
        actual = self.digest()
        actual_size = self._offset
        for want_size in (size, self.expected_size):
            if want_size is not None and want_size != actual_size:
                what = self.expected or expected or self.ref
                self.abort()
                raise ChecksumMismatch(
                    f"blob {what}: size mismatch, expected {want_size} bytes, got {actual_size}; nothing was kept",
                    detail={"expected_size": want_size, "actual_size": actual_size},
                )
        for want in (Digest(expected) if expected is not None else None, self.expected):
            if want is not None and want != actual:
                self.abort()
                raise ChecksumMismatch(
                    f"digest mismatch: expected {want}, got {actual} ({actual_size} bytes); nothing was kept",
                    detail={"expected": want, "actual": actual, "size": actual_size},
                )
        os.fchmod(fd, 0o444)
        self._close_fd()
        info = self._store._publish(self._data, actual, actual_size, media_type)
        self._remove()
        return info

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        """Release the ingest, keeping its bytes for a later resume."""
        self._close_fd()
        self._unlock()

    def abort(self) -> None:
        """Discard the ingest and release it."""
        self._close_fd()
        self._remove()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # an abandoned writer must not leak its fd or lock
        with contextlib.suppress(Exception):
            self.close()

    # -- internals ------------------------------------------------------------------------
    def _require_open(self) -> int:
        if self._fd is None:
            raise FailedPrecondition(f"writer for ingest {self.ref!r} is closed")
        return self._fd

    def _rehash(self, size: int) -> None:
        fd = self._require_open()
        buf = bytearray(_READ_CHUNK)
        view = memoryview(buf)
        pos = 0
        while pos < size:
            n = os.preadv(fd, [view[: min(_READ_CHUNK, size - pos)]], pos)
            if n <= 0:
                break  # the file shrank under us: hash what is there
            self._hash.update(view[:n])
            pos += n
        os.lseek(fd, pos, os.SEEK_SET)
        if pos != os.fstat(fd).st_size:
            os.ftruncate(fd, pos)
        self._offset = pos

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _remove(self) -> None:
        if self._lock_fd is None:
            return  # released already: the ref may belong to another writer by now
        shutil.rmtree(self._dir, ignore_errors=True)
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)


@dataclass(frozen=True)
class DownloadClocks:
    """The clocks of one blob download that outlive an attempt (image ADR-005, config images.download).

    ``stall_s``: fail when no byte arrived for this long, counted from ``last_byte_at``
    (recorded by an earlier attempt, so retries do not restart it) or from the call.
    ``deadline_at``: the whole image's download deadline. Times are ``clock()`` values
    (Unix time by default, because they are persisted across restarts).
    """

    stall_s: float | None = None
    last_byte_at: float | None = None
    deadline_at: float | None = None
    clock: Callable[[], float] = time.time


def copy_to_store(
    src: Iterable[bytes | memoryview],
    writer: Writer,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    timeout_s: float | None = None,
    *,
    total: int | None = None,
    clocks: DownloadClocks | None = None,
) -> int:
    """Stream ``src`` chunks into ``writer`` under its clocks; returns bytes copied.

    ``timeout_s`` bounds this call; ``clocks`` adds the stall limit and the image's
    deadline. ``progress(offset, total)`` follows every chunk (``total`` defaults to the
    writer's expected size). Cancellation raises Canceled, a clock Timeout
    (``detail["clock"]``: "call", "stall" or "deadline"); either way the ingest is kept so the
    next attempt resumes where this one stopped. A source blocked inside one read is bounded
    by its own socket timeout, kept below the stall limit.
    """
    if total is None:
        total = writer.expected_size
    call_deadline = time.monotonic() + timeout_s if timeout_s is not None else None
    clocks = clocks or DownloadClocks()
    last = clocks.last_byte_at if clocks.last_byte_at is not None else clocks.clock()
    _check_clocks(writer, clocks, last, total)  # earlier attempts may have used them up already
    copied = 0
    for chunk in src:
        if cancel is not None and cancel.is_set():
            raise Canceled(f"download of {writer.expected or writer.ref} canceled at {writer.offset} bytes")
        if chunk:
            writer.write(chunk)
            copied += len(chunk)
            last = clocks.clock()
            if progress is not None:
                progress(writer.offset, total)
        _check_clocks(writer, clocks, last, total)
        if call_deadline is not None and time.monotonic() > call_deadline:
            raise Timeout(
                f"download of {writer.expected or writer.ref} exceeded its {timeout_s:g} s timeout "
                f"at {writer.offset} of {total if total is not None else '?'} bytes (it resumes from there)",
                detail={"clock": "call", "offset": writer.offset},
            )
    if cancel is not None and cancel.is_set():
        raise Canceled(f"download of {writer.expected or writer.ref} canceled at {writer.offset} bytes")
    return copied


def _check_clocks(writer: Writer, clocks: DownloadClocks, last: float, total: int | None) -> None:
    now = clocks.clock()
    where = f"at {writer.offset} of {total if total is not None else '?'} bytes"
    if clocks.stall_s is not None and now - last > clocks.stall_s:
        raise Timeout(f"download of {writer.expected or writer.ref} stalled: no byte for {now - last:.0f} s"
                      f" (images.download.stall_s = {clocks.stall_s:g}) {where}",
                      detail={"clock": "stall", "offset": writer.offset})
    if clocks.deadline_at is not None and now > clocks.deadline_at:
        raise Timeout(f"download of {writer.expected or writer.ref} passed the image's download deadline"
                      f" (images.download.image_deadline_s) {where}",
                      detail={"clock": "deadline", "offset": writer.offset})


def digest_file(path: Path | str) -> tuple[Digest, int]:
    """(sha256 digest, size) of a file, streamed in 1 MiB reads into one reused buffer."""
    h = hashlib.sha256()
    buf = bytearray(_READ_CHUNK)
    view = memoryview(buf)
    size = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            h.update(view[:n])
            size += n
    return Digest.from_hex(h.hexdigest()), size


# -- ingest helpers ----------------------------------------------------------------------------


def _lock(directory: Path, ref: str) -> int:
    """Take the ingest's lock, creating the directory; Unavailable when already held."""
    lock_path = directory / "lock"
    for _ in range(10):
        directory.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            continue  # removed between mkdir and open by a finishing writer
        if not _try_flock(fd):
            os.close(fd)
            raise Unavailable(f"ingest {ref!r} is being written by another writer")
        # The holder we waited on may have deleted the directory (commit/abort) after we
        # opened its lock file: a lock on an unlinked inode protects nothing, retry.
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise Unavailable(f"ingest {ref!r} kept changing while being opened")


def _try_flock(fd: int) -> bool:
    # A few quick retries: ingests() probes locks by taking them for a moment, and
    # that must not make a concurrent writer fail.
    for attempt in range(5):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            if attempt < 4:
                time.sleep(0.005)
    return False


def _read_meta(directory: Path) -> dict[str, object] | None:
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _write_meta(directory: Path, meta: dict[str, object]) -> None:
    tmp = directory / "meta.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, directory / "meta.json")


def _read_ingest(directory: Path) -> IngestInfo | None:
    meta = _read_meta(directory)
    try:
        st = (directory / "data").stat()
    except FileNotFoundError:
        st = None
    if meta is None and st is None:
        return None
    meta = meta or {}
    locked = False
    try:
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    else:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            locked = True
        finally:
            os.close(fd)  # closing drops a lock we may have taken
    expected = meta.get("expected")
    expected_size = meta.get("expected_size")
    updated = st.st_mtime if st else directory.stat().st_mtime
    return IngestInfo(
        ref=str(meta.get("ref", directory.name)),
        offset=st.st_size if st else 0,
        expected=Digest(expected) if isinstance(expected, str) else None,
        expected_size=expected_size if isinstance(expected_size, int) else None,
        started=float(meta.get("started", updated)),  # type: ignore[arg-type]
        updated=updated,
        locked=locked,
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
