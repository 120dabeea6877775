"""The files of one job's log: lock, crash recovery, appending records, rotation, the end record.

A ``SegmentWriter`` is created by ``LogPersister.open`` (recovery runs there) and
from then on is touched only by the persister's writer thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections import deque
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import Any

from capsa.errors import Conflict, FailedPrecondition, from_os_error

from ._format import (
    END,
    HEADER_SIZE,
    NOTICE,
    RESERVE_NAME,
    crc32,
    encode_header,
    list_segments,
    notice_last_seq,
    read_dropped,
    scan_valid_prefix,
    segment_name,
    segment_path,
    write_dropped,
)

_log = logging.getLogger("capsa.logs")

# Records are (job, seq, stream, timestamp_ns, data); the first field is the persister's routing key.
Record = tuple[Any, int, int, int, bytes]

_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
# Cap per writev so persisted_seq advances (and followers wake) while a long backlog drains.
_MAX_WRITE_BYTES = 16 << 20
_FILE_MODE = 0o640
_DIR_MODE = 0o750


class SegmentWriter:
    """Appends records to ``log_dir``'s segment files; knows the committed end of the current segment."""

    def __init__(self, log_dir: Path, segment_bytes: int, fsync_on_close: bool, max_bytes: int = 0) -> None:
        self.log_dir = log_dir
        self._segment_bytes = segment_bytes
        # --log-max-size: closed segments are dropped, oldest first, to keep the log within this (0: no limit).
        self._max_bytes = max_bytes
        self._closed_sizes: dict[int, int] = {}  # first seq -> bytes of the segments before the current one
        self.dropped_bytes = read_dropped(log_dir)  # bytes of whole segments dropped so far (all runs)
        self._fsync = fsync_on_close
        self._lock_fd = -1  # the log directory itself, flock(2)-ed; also the dir_fd of every open here
        self._fd = -1
        self._seg_first = 0
        self._seg_size = 0  # bytes of whole records in the current segment; everything past it is junk
        self._unsynced: list[Path] = []  # earlier segments written by this process, to fsync at finish
        self._trim = False  # a failed write may have left bytes past _seg_size
        self._cautious = False  # after a failed write: one record per pwritev, to fill what space is left
        self._end_written = False

    @property
    def segment_bytes(self) -> int:
        return self._segment_bytes

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    # -- opening and recovery (caller's thread) -------------------------------------------------------

    def open(self) -> int:
        """Take the writer lock, repair the tail of the last segment, return the next seq to assign."""
        # The lock is the directory's own descriptor (no lock file: one inode less to create per job,
        # which on a busy ext4 costs more than any other step of opening a log); it also serves the
        # directory fsyncs and the opens below without resolving the path again.
        try:
            lock_fd = os.open(self.log_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:   # the supervisor makes it with the job's directories; others may not
            os.makedirs(self.log_dir, mode=_DIR_MODE, exist_ok=True)
            lock_fd = os.open(self.log_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise Conflict(f"log directory {self.log_dir} is already open by another writer") from None
        self._lock_fd = lock_fd
        try:
            return self._recover()
        except BaseException:
            self._close_fds()
            os.close(lock_fd)
            self._lock_fd = -1
            raise

    def make_reserve(self, size: int) -> None:
        """Set aside ``size`` bytes of disk in ``.reserve`` for the notice and end record of a full disk.

        Raises ``LimitExceeded`` naming the file when even that does not fit: a job
        whose log could not say it is incomplete is refused at start instead.
        """
        if size <= 0:
            return
        path = self.log_dir / RESERVE_NAME
        try:
            fd = os.open(RESERVE_NAME, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE, dir_fd=self._lock_fd)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(RESERVE_NAME, dir_fd=self._lock_fd)
            raise from_os_error(exc, path, what="job log") from exc

    def release_reserve(self) -> bool:
        """Give the reserved space back to the filesystem; True if there was any."""
        try:
            os.unlink(RESERVE_NAME, dir_fd=self._lock_fd)
        except FileNotFoundError:
            return False
        return True

    def _recover(self) -> int:
        firsts = list_segments(self.log_dir)
        if not firsts:
            self._create_segment(1)
            return 1
        first = firsts[-1]
        if self._max_bytes:
            for earlier in firsts[:-1]:
                with contextlib.suppress(FileNotFoundError):
                    self._closed_sizes[earlier] = os.stat(segment_path(self.log_dir, earlier)).st_size
        fd = os.open(segment_path(self.log_dir, first), os.O_RDWR | os.O_CLOEXEC)
        self._fd, self._seg_first = fd, first
        valid, next_seq, ended = scan_valid_prefix(fd, first)
        if ended:
            raise FailedPrecondition(f"log {self.log_dir} is finished; it takes no more output")
        size = os.fstat(fd).st_size
        if size > valid:
            # A crash mid-write leaves a torn record; readers wait at it, so cut it before appending.
            _log.warning(
                "log %s: dropping %d bytes of torn record at %s offset %d",
                self.log_dir,
                size - valid,
                segment_path(self.log_dir, first).name,
                valid,
            )
            os.ftruncate(fd, valid)
        self._seg_size = valid
        return next_seq

    # -- writing (writer thread) ------------------------------------------------------------------------

    def write_some(self, pending: deque[Record], budget: int) -> tuple[int, int, Exception | None]:
        """Write data records from the head of ``pending`` (popping them once written), about ``budget`` bytes.

        Stops before an end record (see ``write_end``). Returns
        ``(last_seq_written, payload_bytes_written, error)``: on an error the
        segment is cut back to its last whole record, what was written before
        it is still reported, and the rest stays in ``pending``.
        """
        last_seq = 0
        written = 0
        try:
            if self._trim:
                self._trim_tail()
            while pending and written < budget and pending[0][2] != END:
                head = pending[0]
                if self._seg_size and self._seg_size + HEADER_SIZE + len(head[4]) > self._segment_bytes:
                    self._rotate(head[1])
                count = self._write_run(islice(pending, 0, None))
                for _ in range(count):
                    _, last_seq, stream, _, data = pending.popleft()
                    if stream == NOTICE:  # stands for lost chunks: not backlog, and it covers their seqs
                        last_seq = notice_last_seq(data, last_seq)
                    else:
                        written += len(data)
        except Exception as exc:  # the writer thread must survive anything and keep the bytes queued
            self._cautious = True
            return last_seq, written, exc
        self._cautious = False
        return last_seq, written, None

    def _write_run(self, records: Iterable[Record]) -> int:
        """One pwritev of consecutive data records that fit the current segment (at least one)."""
        iov: list[bytes] = []
        size = self._seg_size
        payload = 0
        limit = self._segment_bytes
        for _, seq, stream, ts, data in records:
            n = len(data)
            if stream == END or (iov and (self._cautious or size + HEADER_SIZE + n > limit
                                          or payload + n > _MAX_WRITE_BYTES)):
                break
            iov.append(encode_header(seq, ts, stream, n, crc32(data)))
            iov.append(data)
            size += HEADER_SIZE + n
            payload += n
            if len(iov) >= _IOV_MAX:
                break
        self._pwritev_all(iov, size - self._seg_size)
        self._seg_size = size
        return len(iov) // 2

    def _pwritev_all(self, iov: list[bytes], total: int) -> None:
        fd, off = self._fd, self._seg_size
        try:
            done = os.pwritev(fd, iov, off)
            while done < total:  # short write: resume inside the buffer where it stopped
                skip = done
                rest: list[bytes | memoryview] = []
                for buf in iov:
                    if skip >= len(buf):
                        skip -= len(buf)
                        continue
                    rest.append(memoryview(buf)[skip:] if skip else buf)
                    skip = 0
                more = os.pwritev(fd, rest, off + done)
                if more <= 0:
                    raise OSError(errno.EIO, f"pwritev wrote nothing at offset {off + done}")
                done += more
        except OSError:
            self._trim = True
            try:
                self._trim_tail()
            except OSError:
                pass  # retried before the next write: stale bytes past a shorter record would read as corrupt
            raise

    def _trim_tail(self) -> None:
        os.ftruncate(self._fd, self._seg_size)
        self._trim = False

    def _rotate(self, first_seq: int) -> None:
        old = self._fd, self._seg_first, self._seg_size
        self._create_segment(first_seq)  # first, so a failure (ENOSPC) leaves the old state for a retry
        self._retire(*old)

    def _retire(self, fd: int, first: int, size: int) -> None:
        """The segment ``fd`` (first seq ``first``, ``size`` bytes) is no longer the current one."""
        os.close(fd)
        if self._fsync:
            self._unsynced.append(segment_path(self.log_dir, first))
        if self._max_bytes:
            self._closed_sizes[first] = size
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        """Keep the closed segments within the limit less one segment (room for the current one to fill).

        Whole segments only: a reader inside one keeps its open file; a reader starting before the first
        segment left is told by a notice (``capsa.logs.reader``) how much is gone, read from ``.dropped``.
        """
        budget = max(0, self._max_bytes - self._segment_bytes)
        total = sum(self._closed_sizes.values())
        while self._closed_sizes and total > budget:
            first = min(self._closed_sizes)
            size = self._closed_sizes.pop(first)
            path = segment_path(self.log_dir, first)
            # The count first: a crash between the two under-counts nothing that is still on disk.
            write_dropped(self.log_dir, self.dropped_bytes + size)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            if path in self._unsynced:
                self._unsynced.remove(path)
            self.dropped_bytes += size
            total -= size

    def _create_segment(self, first_seq: int) -> None:
        self._fd = os.open(segment_name(first_seq), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE,
                           dir_fd=self._lock_fd)
        self._seg_first = first_seq
        self._seg_size = 0

    def write_end(self, seq: int, timestamp_ns: int) -> None:
        """Make all data durable, write the end record at offset 0 of a segment of its own, release.

        Call once every data record is written; safe to call again after an OSError.

        At offset 0 a record boundary is certain, so ``is_finished`` reads one
        header instead of walking the log, and job output can never forge it.
        """
        if not self._end_written:
            self.sync()
            if self._seg_size:
                self._rotate(seq)
            header = encode_header(seq, timestamp_ns, END, 0, crc32(b""))
            self._pwritev_all([header], HEADER_SIZE)
            self._seg_size = HEADER_SIZE
            self._end_written = True
        if self._fsync:
            os.fsync(self._fd)
            self._fsync_dir()
        self.release_reserve()  # a finished log takes no more records
        self.release()

    def sync(self) -> None:
        """fsync the segments this process wrote (if configured) and the directory entries."""
        if not self._fsync:
            return
        while self._unsynced:
            fd = os.open(self._unsynced[0], os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._unsynced.pop(0)
        if self._fd >= 0:
            os.fsync(self._fd)
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        if self._lock_fd >= 0:
            os.fsync(self._lock_fd)
            return
        fd = os.open(self.log_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def release(self) -> None:
        """Close the files and drop the writer lock (a restarted supervisor may then reopen)."""
        self._close_fds()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _close_fds(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
