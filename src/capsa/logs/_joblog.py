"""``JobLog``: one job's append handle (the supervisor's side of ``LogPersister``).

Its fields are guarded by the persister's lock, except those marked as owned by
the writer thread; the persister (``persister.py``) reads and writes them directly.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import TYPE_CHECKING

from capsa.errors import FailedPrecondition, InvalidArgument

from ._format import END, HEADER_SIZE, MAX_PAYLOAD
from ._segments import Record, SegmentWriter
from .model import Stream

if TYPE_CHECKING:
    from .persister import LogPersister

__all__ = ["JobLog"]

RETRY_MIN_S = 0.05


class JobLog:
    """Append handle for one job's log; create it with ``LogPersister.open``. Thread-safe."""

    def __init__(self, persister: LogPersister, job_id: str, writer: SegmentWriter, next_seq: int) -> None:
        self.job_id = job_id
        self.log_dir = writer.log_dir
        self._p = persister
        self._writer = writer
        # A size-limited log drops whole segments: a chunk larger than a segment would get one of its own
        # and could be dropped at once, so such chunks are split to fit (0: never split).
        self._split_at = writer.segment_bytes - HEADER_SIZE if writer.max_bytes else 0
        self._next_seq = next_seq  # guarded by the persister lock, like every field below
        self._last_assigned = next_seq - 1  # includes the end record once finish() queued it
        self._written = next_seq - 1  # highest seq on disk, end record included
        self._persisted_seq = next_seq - 1
        self._backlog = 0
        self._finishing = False
        self._finished = False
        self._closed = False
        self.first_seq = next_seq  # the first seq this handle assigns (> 1 after a supervisor restart)
        # Owned by the writer thread:
        self._pending: deque[Record] = deque()
        self._retry_at = 0.0
        self._retry_delay = RETRY_MIN_S
        self._error: OSError | None = None
        self._failing_since = 0.0  # monotonic time of the first failure of the current run of failures
        self._end_handed = False  # the end record went to the finisher thread
        # Guarded by the persister lock:
        self._abandon = False  # finish_at_exit asked the writer to give up on the queued output now
        self._lost_bytes = 0  # output bytes given up on (replaced by a notice record)
        self._lost_reason = ""
        self._wake_fd = -1  # eventfd handed out by pause_fd(), readable once the backlog has drained
        self._paused = False
        self._wake_on_stall = False  # paused with its main process gone: woken to re-decide on each failure

    def append(self, stream: Stream, data: bytes) -> int:
        """Queue ``data`` as the next chunk of ``stream``; return its seq. Never waits for the disk.

        ``data`` is kept by reference when it is ``bytes``; other buffers are copied.
        """
        if stream != 1 and stream != 2:  # cheapest check on the hot path
            raise InvalidArgument(f"stream must be Stream.STDOUT or Stream.STDERR, not {stream!r}")
        if type(data) is not bytes:
            data = bytes(data)
        n = len(data)
        if self._split_at and n > self._split_at:
            step = self._split_at
            for i in range(0, n - step, step):
                self.append(stream, data[i:i + step])
            return self.append(stream, data[(n - 1) // step * step:])
        if n > MAX_PAYLOAD:
            raise InvalidArgument(f"a log chunk holds at most {MAX_PAYLOAD} bytes, got {n}")
        ts = time.time_ns()
        p = self._p
        with p._lock:
            if self._finishing or self._closed or p._closing:
                raise FailedPrecondition(
                    f"log of job {self.job_id} is {self._state()}; it takes no more output"
                )
            seq = self._next_seq
            self._next_seq = seq + 1
            self._last_assigned = seq
            p._queue.append((self, seq, int(stream), ts, data))
            self._backlog += n
            p._backlog += n
            if p._writer_idle:
                p._work.notify()
        return seq

    def finish(self) -> None:
        """Queue the end-of-log record after everything appended so far. Idempotent.

        Once all data is written, the finisher thread fsyncs it (``fsync_on_close``)
        and writes the end record; then followers stop, ``is_finished`` is true,
        the files are closed and the writer lock is released.
        """
        p = self._p
        with p._lock:
            if self._finishing:
                return
            if self._closed or p._closing:
                raise FailedPrecondition(f"log of job {self.job_id} is closed")
            self._finishing = True
            seq = self._next_seq
            self._last_assigned = seq
            p._queue.append((self, seq, END, time.time_ns(), b""))
            if p._writer_idle:
                p._work.notify()

    def finish_at_exit(self, wait_s: float = 2.0) -> str:
        """``finish()`` for a job that has exited; returns ``""`` or ``log incomplete: N bytes not written (...)``.

        If writes are failing right now, the output still queued is given up on at
        once (the job is gone, nothing can wait for the disk any more; the writer
        replaces it by a notice record) so the exit record can say what was lost.
        Waits at most ``wait_s`` for the writer to do so.
        """
        self.finish()
        p = self._p
        deadline = time.monotonic() + wait_s
        with p._lock:
            if self._backlog > 0 and self._error is None and self._lost_bytes:
                # Output was already lost and the last write happened to succeed (the notice, from the
                # reserve): see whether the rest drains or fails before deciding what to report.
                p._persisted.wait_for(lambda: not self._backlog or self._error is not None or self._closed,
                                      wait_s / 2)
            if self._error is not None and self._backlog > 0:
                self._abandon = True
                p._work.notify()
                p._persisted.wait_for(lambda: not self._abandon or self._closed,
                                      max(0.0, deadline - time.monotonic()))
            return self._loss_note()

    def _loss_note(self) -> str:
        lost = self._lost_bytes + (self._backlog if self._abandon else 0)  # abandon pending: all of it goes
        if not lost:
            return ""
        return f"log incomplete: {lost} bytes not written ({self._lost_reason or 'write failed'})"

    @property
    def dropped_bytes(self) -> int:
        """Bytes of oldest segments dropped to keep within the job's --log-max-size."""
        return self._writer.dropped_bytes

    @property
    def incomplete_bytes(self) -> int:
        """Output bytes given up on (never written; a notice record stands in their place)."""
        return self._lost_bytes

    def pause_fd(self, *, exited: bool = False) -> int | None:
        """After ``append``: None, or an fd to wait on because this job is over its backlog limit.

        The caller stops reading the job's pipes until the fd is readable, then
        calls :meth:`resume`. ``exited``: the job's main process is gone (what
        still writes are leftovers holding its pipes). Such a job is not held
        while writes fail: its queued output is given up on instead (counted, a
        notice takes its place) and None is returned; while the disk merely lags
        it is held like any job, and woken at each failed write to decide again.
        """
        p = self._p
        if self._backlog < p.job_backlog_bytes and p._backlog < p.total_backlog_bytes:
            return None  # the hot path: no lock
        with p._lock:
            if self._backlog < p.job_backlog_bytes and p._backlog < p.total_backlog_bytes:
                return None
            if exited and self._error is not None and self._backlog > 0:
                self._abandon = True
                p._work.notify()
                p._persisted.wait_for(lambda: not self._abandon or self._closed, 1.0)
                return None
            self._wake_on_stall = exited
            if self._wake_fd < 0:
                self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            if not self._paused:
                self._paused = True
                p._paused.add(self)
                p.pauses += 1
            return self._wake_fd

    def resume(self) -> int:
        """Stop waiting for the drain; returns the fd ``pause_fd`` gave (-1 if none) for the caller to unregister."""
        p = self._p
        with p._lock:
            if self._paused:
                self._paused = False
                p._paused.discard(self)
            fd = self._wake_fd
        if fd >= 0:
            try:
                os.eventfd_read(fd)
            except (BlockingIOError, OSError):
                pass  # not signalled (e.g. the job exited while paused): nothing to consume
        return fd

    def wait_persisted(self, timeout: float | None = None) -> bool:
        """Wait until everything appended (and the end record, if finishing) is written; False on timeout."""
        p = self._p
        with p._lock:
            target = self._last_assigned
            return p._persisted.wait_for(lambda: self._written >= target or self._closed, timeout)

    @property
    def persisted_seq(self) -> int:
        """Seq of the last chunk written to the page cache (readers can see everything up to it)."""
        return self._persisted_seq

    @property
    def last_seq(self) -> int:
        """Seq of the last chunk appended (0 when none yet)."""
        return self._next_seq - 1

    @property
    def backlog_bytes(self) -> int:
        """Payload bytes appended but not yet written."""
        return self._backlog

    @property
    def finished(self) -> bool:
        """True once the end record is on disk."""
        return self._finished

    @property
    def error(self) -> OSError | None:
        """The last write error while it is being retried; None once writes succeed again."""
        return self._error

    def _state(self) -> str:
        return "finished" if self._finishing else "closed"

    def __repr__(self) -> str:
        return f"JobLog(job_id={self.job_id!r}, log_dir={str(self.log_dir)!r}, last_seq={self.last_seq})"
