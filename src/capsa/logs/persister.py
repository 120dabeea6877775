"""The write side: ``LogPersister`` (two threads serving every job) and ``JobLog`` (one job's handle).

``JobLog.append`` only takes a lock, numbers the chunk and queues a reference
to it, so the supervisor's selector thread never waits for the disk. The
writer thread drains the queue job by job in bounded slices (so one chatty job
cannot starve the others), builds headers and CRCs, and writes each run of
records with a single ``pwritev``. The queue is unbounded by design: bytes are
never dropped, and ``backlog_bytes`` shows how far the disk is behind. When a
job's data is all written, its end record goes to the finisher thread, which
fsyncs and writes it there, so a slow fsync never holds up other jobs' output.

A failed write (ENOSPC, EIO) is cut back to the last whole record and retried
with backoff while the job's output stays queued; ``JobLog.error`` shows it.

Back-pressure and giving up (ADR-0004): a job whose backlog passes
``job_backlog_bytes`` (or any job while the total passes ``total_backlog_bytes``)
gets a wake fd from ``JobLog.pause_fd()``; the supervisor stops reading its pipes
until that fd is readable (backlog under half the limit), so the job blocks in
write(2) as it would on a slow pipe, and memory stays bounded. Queued output is
given up on only when nothing can block any more: at the job's exit while
writes are failing (``finish_at_exit``), ``give_up_after_exit_s`` after the exit
if they start failing later, or ``give_up_at_close_s`` into ``close``. What is
given up is counted and replaced by one notice record (``Stream.NOTICE``,
``log incomplete: N bytes not written (...)``) written from the log's reserve.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from pathlib import Path

from capsa.errors import AlreadyExists, FailedPrecondition, InvalidArgument, Timeout, from_os_error

from ._format import END, NOTICE, encode_notice, notice_last_seq, notice_lost_bytes
from ._joblog import RETRY_MIN_S as _RETRY_MIN_S
from ._joblog import JobLog
from ._segments import Record, SegmentWriter

__all__ = ["JobLog", "LogPersister"]

_log = logging.getLogger("capsa.logs")

_SLICE_BYTES = 32 << 20  # per job per round: bounds how long other jobs wait behind a big backlog
_RETRY_MAX_S = 5.0
_MIN_SEGMENT_BYTES = 1024


class LogPersister:
    """Persists the logs of every job of a supervisor process.

    One writer thread writes all data; one finisher thread does the fsyncs and
    end records of finishing jobs, so a slow fsync never stalls other jobs.
    """

    def __init__(
        self,
        *,
        segment_bytes: int = 64 << 20,
        fsync_on_close: bool = True,
        job_backlog_bytes: int = 8 << 20,
        total_backlog_bytes: int = 64 << 20,
        give_up_after_exit_s: float = 60.0,
        give_up_at_close_s: float = 5.0,
        reserve_bytes: int = 64 << 10,
    ) -> None:
        if segment_bytes < _MIN_SEGMENT_BYTES:
            raise InvalidArgument(f"segment_bytes must be at least {_MIN_SEGMENT_BYTES}, got {segment_bytes}")
        if job_backlog_bytes <= 0 or total_backlog_bytes <= 0:
            raise InvalidArgument("backlog limits must be positive")
        self.segment_bytes = segment_bytes
        self.fsync_on_close = fsync_on_close
        self.job_backlog_bytes = job_backlog_bytes
        self.total_backlog_bytes = total_backlog_bytes
        self.give_up_after_exit_s = give_up_after_exit_s
        self.give_up_at_close_s = give_up_at_close_s
        self.reserve_bytes = reserve_bytes
        self.pauses = 0  # how often a job was held back (observable back-pressure)
        self._paused: set[JobLog] = set()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._persisted = threading.Condition(self._lock)
        self._queue: list[Record] = []
        self._backlog = 0
        self._writer_idle = False
        self._closing = False
        self._jobs: dict[str, JobLog] = {}
        self._dirs: set[Path] = set()
        self._to_finish: list[tuple[JobLog, Record]] = []
        self._finish_work = threading.Condition(self._lock)
        self._writer_done = False
        # Readable (an eventfd's counter) once any log has finished since the last read: the supervisor
        # waits for it in its selector instead of polling JobLog.finished while exit events wait.
        self._finished_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="capsa-log-writer", daemon=True)
        self._finisher = threading.Thread(target=self._finish_loop, name="capsa-log-finisher", daemon=True)
        self._thread.start()
        self._finisher.start()
        _LIVE.add(self)

    def open(self, job_id: str, log_dir: Path, *, max_bytes: int = 0) -> JobLog:
        """Open (creating) ``log_dir`` for appending.

        If it already holds a log (supervisor restart), a torn trailing record is
        truncated and numbering continues after the last whole record. Raises
        ``FailedPrecondition`` if that log is already finished, ``Conflict`` if
        another process holds it, ``AlreadyExists`` if this persister does.
        Runs on the caller's thread: a mkdir and a few opens, plus one scan of
        the last segment when logs already exist.
        """
        log_dir = Path(log_dir).absolute()
        with self._lock:
            if self._closing:
                raise FailedPrecondition("log persister is closed")
            if job_id in self._jobs or log_dir in self._dirs:
                raise AlreadyExists(f"log of job {job_id} ({log_dir}) is already open")
            self._dirs.add(log_dir)  # reserve, so recovery below runs outside the lock
        try:
            # A size limit needs segments well under it: whole oldest segments are what gets dropped.
            segment_bytes = min(self.segment_bytes, max(4096, max_bytes // 8)) if max_bytes else self.segment_bytes
            writer = SegmentWriter(log_dir, segment_bytes, self.fsync_on_close, max_bytes=max_bytes)
            try:
                next_seq = writer.open()
            except OSError as exc:  # e.g. ENOSPC creating the first segment: say which log, as LimitExceeded
                raise from_os_error(exc, exc.filename or log_dir, what=f"log of job {job_id}") from exc
            try:
                writer.make_reserve(self.reserve_bytes)
            except BaseException:
                writer.release()
                raise
        except BaseException:
            with self._lock:
                self._dirs.discard(log_dir)
            raise
        job = JobLog(self, job_id, writer, next_seq)
        with self._lock:
            if self._closing:
                self._dirs.discard(log_dir)
                writer.release()
                raise FailedPrecondition("log persister is closed")
            self._jobs[job_id] = job
        return job

    def finished_fd(self) -> int:
        """An fd that becomes readable when a log finishes (its end record is on disk); read it with
        ``os.eventfd_read`` before looking at ``JobLog.finished``, so that no finish goes unseen.
        Owned by the persister; it stays open as long as the persister object lives."""
        return self._finished_fd

    @property
    def backlog_bytes(self) -> int:
        """Payload bytes queued across all jobs."""
        return self._backlog

    def jobs(self) -> list[JobLog]:
        """The job logs still open (not yet finished)."""
        with self._lock:
            return list(self._jobs.values())

    def close(self, timeout: float | None = None) -> None:
        """Write everything queued, fsync and release unfinished logs (if ``fsync_on_close``), stop the thread.

        Raises ``Timeout`` if the writer has not drained within ``timeout``
        (e.g. disk full); it keeps retrying and ``close`` may be called again.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._closing = True
            self._work.notify()
        for thread in (self._thread, self._finisher):
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise Timeout(
                    f"log persister not drained after {timeout} s: {self._backlog} bytes queued, "
                    f"{len(self._jobs)} logs open"
                )

    def __enter__(self) -> LogPersister:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writer thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        active: dict[JobLog, None] = {}  # jobs with pending records, in arrival order
        while True:
            unfinished: list[JobLog] | None = None
            with self._lock:
                while not self._queue:
                    now = time.monotonic()
                    if any(j._retry_at <= now or j._abandon for j in active):
                        break
                    if not active and self._closing:
                        unfinished = [j for j in self._jobs.values() if not j._end_handed]
                        break
                    timeout = max(0.0, min(j._retry_at for j in active) - now) if active else None
                    self._writer_idle = True
                    self._work.wait(timeout)
                    self._writer_idle = False
                batch, self._queue = self._queue, []
            if unfinished is not None:
                self._release_unfinished(unfinished)
                return
            for rec in batch:
                job = rec[0]
                job._pending.append(rec)
                active[job] = None
            self._write_round(active)

    def _write_round(self, active: dict[JobLog, None]) -> None:
        now = time.monotonic()
        progress: list[tuple[JobLog, int, int]] = []
        handoff: list[tuple[JobLog, Record]] = []
        stalled: list[JobLog] = []
        for job in list(active):
            if job._retry_at > now and not job._abandon:
                continue
            if self._should_give_up(job, now):
                self._give_up(job)
                if not job._pending:
                    del active[job]
                    continue
            last_seq, nbytes, exc = job._writer.write_some(job._pending, _SLICE_BYTES)
            if exc is not None:
                self._stall(job, exc)
                stalled.append(job)
            elif job._error is not None:
                _log.info("log of job %s: writes succeed again", job.job_id)
                job._error, job._retry_at, job._retry_delay = None, 0.0, _RETRY_MIN_S
                job._failing_since = 0.0
            if exc is None and job._pending and job._pending[0][2] == END:
                handoff.append((job, job._pending.popleft()))
            if not job._pending:
                del active[job]
            progress.append((job, last_seq, nbytes))
        with self._lock:
            for job, last_seq, nbytes in progress:
                if last_seq:
                    job._persisted_seq = job._written = last_seq
                job._backlog -= nbytes
                self._backlog -= nbytes
            for job, _ in handoff:
                job._end_handed = True
            if handoff:
                self._to_finish.extend(handoff)
                self._finish_work.notify()
            self._wake_drained()
            for job in stalled:
                if job._paused and job._wake_on_stall:
                    self._wake(job)
            self._persisted.notify_all()

    def _wake(self, job: JobLog) -> None:
        self._paused.discard(job)
        job._paused = False
        os.eventfd_write(job._wake_fd, 1)

    def _wake_drained(self) -> None:
        """Signal held-back jobs whose backlog fell to half their limit (hysteresis: no pause/resume flapping)."""
        if not self._paused or self._backlog > self.total_backlog_bytes // 2:
            return
        for job in list(self._paused):
            if job._backlog <= self.job_backlog_bytes // 2:
                self._wake(job)

    def _should_give_up(self, job: JobLog, now: float) -> bool:
        """The policy of ADR-0004: only when no process can wait for the disk any more."""
        if job._abandon:
            if job._error is not None:
                return True
            with self._lock:  # writes succeeded since it was asked: nothing needs to be lost after all
                job._abandon = False
                self._persisted.notify_all()
            return False
        if not job._failing_since:
            return False
        if self._closing:
            return now - job._failing_since >= self.give_up_at_close_s
        return job._finishing and now - job._failing_since >= self.give_up_after_exit_s

    def _give_up(self, job: JobLog) -> None:
        """Replace the job's unwritten output by one notice record standing for its seqs (writer thread)."""
        pending = job._pending
        ends = [r for r in pending if r[2] == END]
        lost = [r for r in pending if r[2] != END]
        data_bytes = sum(len(r[4]) for r in lost if r[2] != NOTICE)
        reason = job._error.strerror if job._error is not None and job._error.strerror else job._lost_reason
        reason = reason or "write failed"
        pending.clear()
        if data_bytes:
            # Everything pending is one contiguous run of seqs (an unwritten earlier notice first,
            # when output is shed more than once): one notice stands for all of it.
            first = lost[0][1]
            last = max(notice_last_seq(r[4], r[1]) if r[2] == NOTICE else r[1] for r in lost)
            gap = data_bytes + sum(notice_lost_bytes(r[4]) for r in lost if r[2] == NOTICE)
            text = f"log incomplete: {gap} bytes not written ({reason})\n"
            pending.append((job, first, NOTICE, time.time_ns(), encode_notice(last, gap, text)))
            _log.warning("log of job %s: gave up on %d bytes of output (%s); a notice marks the gap",
                         job.job_id, data_bytes, reason)
        elif lost:  # only a notice that cannot be written either, at close: the exit reason still tells
            _log.warning("log of job %s: cannot write its 'log incomplete' notice (%s)", job.job_id, reason)
        pending.extend(ends)
        if job._writer.release_reserve():
            job._retry_at = 0.0  # the reserve was kept for exactly this write: try it now
        with self._lock:
            job._backlog -= data_bytes
            self._backlog -= data_bytes
            job._lost_bytes += data_bytes
            job._lost_reason = reason
            job._abandon = False
            self._wake_drained()
            self._persisted.notify_all()

    def _stall(self, job: JobLog, exc: Exception) -> None:
        if not isinstance(exc, OSError):
            _log.error("log of job %s: unexpected failure; will retry", job.job_id, exc_info=exc)
            exc = OSError(str(exc))
        elif job._error is None:
            _log.warning(
                "log of job %s: write failed (%s); output stays queued and is retried", job.job_id, exc
            )
        job._error = exc
        now = time.monotonic()
        job._failing_since = job._failing_since or now
        job._retry_at = now + job._retry_delay
        if self._closing:  # come back in time to give up (see _should_give_up)
            job._retry_at = min(job._retry_at, job._failing_since + self.give_up_at_close_s)
        job._retry_delay = min(job._retry_delay * 2, _RETRY_MAX_S)

    def _release_unfinished(self, jobs: list[JobLog]) -> None:
        """At close, once nothing is queued and appends are refused: make unfinished logs durable, unlock."""
        for job in jobs:
            try:
                job._writer.sync()
            except OSError as exc:
                _log.warning("log of job %s: fsync at close failed: %s", job.job_id, exc)
            job._writer.release()
        with self._lock:
            for job in jobs:
                job._closed = True
                self._forget(job)
            self._writer_done = True
            self._finish_work.notify()
            self._persisted.notify_all()

    def _forget(self, job: JobLog) -> None:
        self._jobs.pop(job.job_id, None)
        self._dirs.discard(job.log_dir)
        self._paused.discard(job)
        if job._wake_fd >= 0:  # the supervisor unregisters it at the job's exit, before finish()
            os.close(job._wake_fd)
            job._wake_fd = -1

    # -- finisher thread ------------------------------------------------------------------------------
    # fsync can take long on a busy disk; doing it here keeps the writer streaming every other job.

    def _finish_loop(self) -> None:
        retry: list[tuple[JobLog, Record]] = []
        while True:
            with self._lock:
                while True:
                    now = time.monotonic()
                    if self._to_finish or any(j._retry_at <= now for j, _ in retry):
                        break
                    if self._writer_done and not retry:
                        return
                    self._finish_work.wait(
                        max(0.0, min(j._retry_at for j, _ in retry) - now) if retry else None
                    )
                todo = [r for r in retry if r[0]._retry_at <= now] + self._to_finish
                retry = [r for r in retry if r[0]._retry_at > now]
                self._to_finish = []
            for job, rec in todo:
                seq = rec[1]
                try:
                    job._writer.write_end(seq, rec[3])
                except Exception as exc:  # keep the job open and try again; never lose the end
                    self._stall(job, exc)
                    if self._closing and time.monotonic() - job._failing_since >= self.give_up_at_close_s:
                        self._abandon_end(job, exc)  # shutting down: leave the log unfinished, not the process
                        continue
                    retry.append((job, rec))
                    continue
                with self._lock:
                    job._written = seq
                    job._finished = True
                    job._error = None
                    self._forget(job)
                    self._persisted.notify_all()
                os.eventfd_write(self._finished_fd, 1)

    def _abandon_end(self, job: JobLog, exc: Exception) -> None:
        _log.warning("log of job %s: end record not written at close (%s); the log stays unfinished", job.job_id, exc)
        job._writer.release()
        with self._lock:
            job._closed = True
            self._forget(job)
            self._persisted.notify_all()

    def __repr__(self) -> str:
        return f"LogPersister(jobs={len(self._jobs)}, backlog_bytes={self._backlog})"

    def __del__(self) -> None:
        fd, self._finished_fd = getattr(self, "_finished_fd", -1), -1
        if fd >= 0:
            os.close(fd)


# Daemon threads would die with queued output at interpreter exit; they still run during atexit,
# so an exiting supervisor that forgot close() still gets everything written.
_LIVE: weakref.WeakSet[LogPersister] = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:
    for persister in list(_LIVE):
        try:
            persister.close(timeout=30)
        except Exception as exc:  # exiting anyway: report, do not mask the exit status
            _log.error("log persister not drained at exit: %s", exc)
