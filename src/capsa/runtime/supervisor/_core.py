"""The supervisor's jobs: start through the zygote, read output, reap, stop, answer.

Every request handler takes a validated request dataclass and returns its reply (or answers
later through the ``Caller``); the loop, framing and error replies are :mod:`._loop`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import selectors
import signal
import time
from pathlib import Path
from typing import Any

from capsa.errors import CapsaError, FailedPrecondition, NotFound, Timeout
from capsa.logs import LogPersister, Stream
from capsa.runtime import cgroups
from capsa.runtime.protocol import (
    ErrorReply,
    FenceRequest,
    ForgetRequest,
    JobRecord,
    JobReply,
    ListReply,
    ListRequest,
    Message,
    MountRequest,
    OkReply,
    PingReply,
    PingRequest,
    ProcState,
    ShutdownRequest,
    SignalRequest,
    StageFailed,
    StopRequest,
    SubscribeRequest,
    ZygoteMount,
    decode,
    error_reply,
)
from capsa.runtime.standby import STANDBY_IDLE_S
from capsa.runtime.supervisor import _start
from capsa.runtime.supervisor._exec import ExecMixin
from capsa.runtime.supervisor._interactive import InteractiveMixin
from capsa.runtime.supervisor._links import (
    Caller,
    HostProcesses,
    Processes,
    Zygote,
    ZygoteLink,
    read_ready,
)
from capsa.runtime.supervisor._loop import EventLoop, handles
from capsa.runtime.supervisor._standby import StandbyMixin
from capsa.runtime.supervisor._start import START_TIMEOUT_S, Job, StartMixin
from capsa.runtime.wire import FrameReader

__all__ = ["START_TIMEOUT_S", "Supervisor"]

_READ_CHUNK = 1 << 20
# An exit event waits until the job's log is finished (end record on disk), so a daemon that
# reads the log of a job it saw exit reads all of it. The persister's finished fd wakes the loop
# when a log finishes; a log that cannot be finished (disk failing) holds its event no longer
# than the limit.
_LOG_FINISH_LIMIT_S = 10.0
# The zygote does a live mount in its own process (runtime/mounts.py, in_process). One that does not
# answer by then (a path lookup hung in the job's root) costs the zygote: it is killed and replaced,
# as the forked mount helper it replaced was killed after the same time.
MOUNT_TIMEOUT_S = 30.0


class Supervisor(StartMixin, ExecMixin, InteractiveMixin, StandbyMixin, EventLoop):
    def __init__(self, home: Path, *, driver: Any = None, zygote: Zygote | None = None,
                 processes: Processes | None = None, persister: LogPersister | None = None,
                 standby_idle_s: float | None = STANDBY_IDLE_S) -> None:
        self.home = home
        self.run_dir = home / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(self.run_dir / "supervisor.sock", zygote or ZygoteLink())
        self.jobs: dict[str, Job] = {}
        self.by_pid: dict[int, str] = {}
        self.by_fd: dict[int, tuple[str, str]] = {}   # fd -> (job_id, "out"|"err"|"report")
        self.early_exits: dict[int, int] = {}
        # zygote reply fd -> (asker, frames, monotonic deadline of the zygote's answer)
        self.mount_replies: dict[int, tuple[Caller, FrameReader, float]] = {}
        self.unpublished: dict[str, float] = {}   # exited job -> monotonic limit for its log to finish
        self.abandoned: dict[int, FrameReader] = {}   # report fd of a start that failed after its order
        self.abandoned_pids: set[int] = set()   # their processes, not yet reaped
        self.driver = driver
        self.processes = processes or HostProcesses()
        self.persister = persister
        self._exec_init()
        self._standby_init(standby_idle_s)

    # -- set-up ----------------------------------------------------------------------------------
    def start(self, *, signals: bool = True) -> None:
        """Become a subreaper, start the zygote, listen. ``signals=False``: in-process (tests)."""
        if signals:
            from capsa.runtime.security._kernel import prctl

            prctl(36, 1)   # PR_SET_CHILD_SUBREAPER: orphaned job processes are re-parented to us
            self.install_signals()
        self.zygote.spawn()
        if self.driver is None:
            self.driver = cgroups.detect()
        if self.persister is None:
            self.persister = LogPersister()
        self.sel.register(self.persister.finished_fd(), selectors.EVENT_READ, ("logs-finished", None))
        self.listen()
        (self.run_dir / "supervisor.pid").write_text(str(os.getpid()))

    def answer(self, caller: Caller, msg: Message) -> None:
        """A deferred reply (start at exec, mount when the zygote is done)."""
        if not caller.conn.closed:
            self._queue_reply(caller.conn, msg, caller.request_id)
            self.update(caller.conn)

    # -- deadlines ------------------------------------------------------------------------------------
    def next_timeout(self) -> float | None:
        deadlines = [d for j in self.jobs.values() for d in (j.kill_at, j.start_deadline, j.fence_at) if d is not None]
        deadlines.extend(deadline for _caller, _reader, deadline in self.mount_replies.values())
        if self.unpublished:
            deadlines.append(min(self.unpublished.values()))
        standby = self.standby_deadline()
        if standby is not None:
            deadlines.append(standby)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def run_deadlines(self) -> None:
        now = time.monotonic()
        self.run_standby_deadline(now)
        if self.unpublished:
            self._publish_finished(now)
        for fd, (_caller, _reader, deadline) in list(self.mount_replies.items()):
            if now >= deadline:
                self.log(f"the zygote did not finish a mount within {MOUNT_TIMEOUT_S:g}s; replacing it")
                self.zygote.kill()   # reaped and respawned in on_children
                self._end_mount(fd, error_reply(Timeout(f"the mount did not finish within {MOUNT_TIMEOUT_S:g}s")))
        for job in list(self.jobs.values()):
            if job.fence_at is not None and now >= job.fence_at:
                job.fence_at = None
                if job.record.state != ProcState.EXITED:
                    self.log(f"job {job.record.job_id}: its pool lease deadline passed unrenewed; killing it")
                    self._kill_cgroup(job)
            if job.kill_at is not None and now >= job.kill_at:
                job.kill_at = None
                if job.record.state != ProcState.EXITED:
                    self._kill_cgroup(job)
            if job.start_deadline is not None and now >= job.start_deadline and job.report_fd != -1:
                job.start_deadline = None
                self._drain_report(job)   # an exec that happened just now is a start, not a timeout
                if job.report_fd == -1:
                    continue
                self.log(f"job {job.record.job_id} did not exec within {_start.START_TIMEOUT_S:g}s; killing it")
                job.start_error = job.start_error or StageFailed(
                    "start", errno.ETIMEDOUT, f"the command was not exec'd within {_start.START_TIMEOUT_S:g}s")
                self._kill_cgroup(job)
                self._close_fd(job.report_fd)
                job.report_fd = -1
                self._on_report_eof(job)

    # -- reaping ---------------------------------------------------------------------------------
    def on_children(self) -> None:
        for pid, status in self.processes.reap():
            if pid == self.zygote.pid:
                # Running jobs do not depend on the zygote (they are our children now); only
                # starts do. A start it was handling sees its report pipe close and fails.
                self.log(f"zygote {pid} exited with status {status}; starting a new one")
                if self.running:
                    self.forget_zygote_fd()
                    self.zygote.spawn()
                continue
            if self._exec_reaped(pid, status) or self.standby_reaped(pid):
                continue
            job_id = self.by_pid.get(pid)
            if pid in self.abandoned_pids:
                self.abandoned_pids.discard(pid)
                continue
            if job_id is None:
                self.early_exits[pid] = status
                continue
            job = self.jobs[job_id]
            job.wait_status = status
            self._maybe_finish(job)

    # -- output, mount replies -------------------------------------------------------------------------
    def on_fd(self, kind: str, fd: int) -> None:
        if kind == "logs-finished":
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(fd)   # first, so a log finishing from here on wakes the loop again
            self._publish_finished(time.monotonic())
            return
        if kind == "mount":
            self._on_mount_reply(fd)
            return
        if kind == "exec":
            self._on_exec_fd(fd)
            return
        if kind == "abandoned":
            self._on_abandoned_report(fd)
            return
        if kind == "standby":
            self.on_standby_fd(fd)
            return
        if fd not in self.by_fd:
            return
        job_id, stream = self.by_fd[fd]
        job = self.jobs[job_id]
        if stream == "resume":  # the persister drained this job's backlog
            self._resume_output(job)
            return
        data = read_ready(fd, _READ_CHUNK)
        if data is None:
            return
        if data:
            if stream == "report":
                self._on_report(job, data)
            else:
                job.log.append(Stream.STDOUT if stream == "out" else Stream.STDERR, data)
                wake_fd = job.log.pause_fd(exited=job.wait_status is not None)
                if wake_fd is not None:
                    self._pause_output(job, wake_fd)
            return
        self._close_fd(fd)
        if stream == "report":
            job.report_fd = -1
            self._on_report_eof(job)
        else:
            job.out_fds.discard(fd)
            self._stdin_output_closed(job, fd)
            self._maybe_finish(job)

    def _drain_report(self, job: Job) -> None:
        while job.report_fd != -1:
            fd = job.report_fd
            data = read_ready(fd)
            if data is None:
                return
            if data:
                self._on_report(job, data)
                continue
            self._close_fd(fd)
            job.report_fd = -1
            self._on_report_eof(job)

    def _close_fd(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(fd)
        self.by_fd.pop(fd, None)
        os.close(fd)

    def _pause_output(self, job: Job, wake_fd: int) -> None:
        """Back-pressure (ADR-0004): stop reading the job's pipes, so it blocks in write(2), until wake_fd fires."""
        for fd in job.out_fds:
            with contextlib.suppress(KeyError):
                self.sel.unregister(fd)
        if wake_fd not in self.by_fd:
            self.by_fd[wake_fd] = (job.record.job_id, "resume")
            self.sel.register(wake_fd, selectors.EVENT_READ, ("pipe", None))

    def _resume_output(self, job: Job) -> None:
        wake_fd = job.log.resume()
        if self.by_fd.pop(wake_fd, None) is not None:
            self.sel.unregister(wake_fd)
        for fd in job.out_fds:
            if fd not in self.sel.get_map():
                self.sel.register(fd, selectors.EVENT_READ, ("pipe", None))

    # -- end of a job --------------------------------------------------------------------------------
    def _maybe_finish(self, job: Job) -> None:
        rec = job.record
        if job.wait_status is not None and rec.state != ProcState.EXITED:
            self._resume_output(job)  # an exited job is never held back: drain its pipes (ADR-0004)
        if rec.state == ProcState.EXITED or job.wait_status is None or job.out_fds or job.report_fd != -1:
            return
        status = job.wait_status
        code = os.waitstatus_to_exitcode(status)
        rec.signal = -code if code < 0 else 0
        rec.exit_code = 128 + rec.signal if code < 0 else code
        with contextlib.suppress(Exception):
            rec.oom_killed = bool(job.cgroup.oom_killed())
        with contextlib.suppress(Exception):
            job.cgroup.remove()   # kills what is left in it first (kill_all), as a job's leftovers must die
        if job.start_error is not None:
            rec.reason = rec.reason or "start failed"
        elif rec.oom_killed:
            rec.reason = "OOM killed"
        elif rec.stop_requested:
            rec.reason = "stopped by user"
        elif rec.signal:
            rec.reason = f"killed by signal {signal.Signals(rec.signal).name}" if rec.signal in _SIGNALS \
                else f"killed by signal {rec.signal}"
        elif rec.exit_code:
            rec.reason = f"exited with code {rec.exit_code}"
        rec.state = ProcState.EXITED
        rec.ended_ns = time.time_ns()
        self._close_stdin(job)
        job.kill_at = None
        self.by_pid.pop(rec.pid, None)
        lost = job.log.finish_at_exit()  # gives up on output a failing disk still holds, so the record can say so
        rec.log_dropped_bytes = job.log.dropped_bytes
        if lost:
            rec.reason = f"{rec.reason}; {lost}" if rec.reason else lost
            rec.log_incomplete_bytes = job.log.incomplete_bytes
        _write_status(job.spec.job_dir, rec)
        if job.log.finished:
            self.publish(rec)
        else:
            self.unpublished[rec.job_id] = time.monotonic() + _LOG_FINISH_LIMIT_S

    def _publish_finished(self, now: float) -> None:
        for job_id, limit in list(self.unpublished.items()):
            job = self.jobs.get(job_id)
            if job is None:   # forgotten meanwhile (by a list() reader): nobody waits for its event
                del self.unpublished[job_id]
            elif job.log.finished or now >= limit:
                if not job.log.finished:
                    self.log(f"log of job {job_id} not finished {_LOG_FINISH_LIMIT_S:g}s after its exit; "
                             "sending its exit event anyway")
                del self.unpublished[job_id]
                job.record.log_dropped_bytes = job.log.dropped_bytes   # the last rotations drop more
                self.publish(job.record)

    # -- live mounts (capsules) -------------------------------------------------------------------------
    @handles(MountRequest)
    def _mount(self, req: MountRequest, caller: Caller) -> Message | None:
        """Hand an attach/swap/detach to the zygote with the job's pidfd; its answer comes on a pipe."""
        job = self.jobs.get(req.job_id)
        if job is None or job.record.state == ProcState.EXITED or job.wait_status is not None:  # reaped: PID free
            raise NotFound(f"job {req.job_id} is not running")
        if job.record.state != ProcState.RUNNING or not job.record.pid:
            raise FailedPrecondition(f"job {req.job_id} has not started yet")
        try:
            # Our own (re-parented) child, not yet reaped: the PID cannot have been reused.
            pidfd = self.processes.pidfd(job.record.pid)
        except ProcessLookupError as exc:
            raise NotFound(f"job {req.job_id} has exited") from exc
        reply_r, reply_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.mount_replies[reply_r] = (caller, FrameReader(), time.monotonic() + MOUNT_TIMEOUT_S)
        self.sel.register(reply_r, selectors.EVENT_READ, ("mount", None))
        self.zygote.submit(ZygoteMount(req.action, req.target, req.source, req.create_target), [pidfd, reply_w])
        return None

    def _on_mount_reply(self, fd: int) -> None:
        _caller, reader, _deadline = self.mount_replies[fd]
        data = read_ready(fd)
        if data is None:
            return
        frames: list[dict[str, Any]] = []
        with contextlib.suppress(CapsaError):
            frames = reader.feed(data)
        if frames or not data:
            reply: Message = ErrorReply("internal", "the zygote gave no answer to a mount")
            with contextlib.suppress(CapsaError):
                if frames and isinstance(msg := decode(frames[0])[1], (OkReply, ErrorReply)):
                    reply = msg
            self._end_mount(fd, reply)

    def _end_mount(self, fd: int, reply: Message) -> None:
        caller, _reader, _deadline = self.mount_replies.pop(fd)
        self.sel.unregister(fd)
        os.close(fd)
        self.answer(caller, reply)

    # -- stop / signal / forget / list / ping / subscribe / shutdown -----------------------------------------
    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"unknown job {job_id}")
        return job

    @handles(StopRequest)
    def _stop(self, req: StopRequest, caller: Caller) -> Message:
        job = self._job(req.job_id)
        if job.record.state != ProcState.EXITED:
            job.record.stop_requested = True
            with contextlib.suppress(Exception):
                job.cgroup.signal_all(signal.SIGTERM)
            if req.grace_s <= 0:
                self._kill_cgroup(job)
            else:
                job.kill_at = time.monotonic() + req.grace_s
        return JobReply(dataclasses.replace(job.record))

    def _kill_cgroup(self, job: Job) -> None:
        try:
            job.cgroup.kill_all()
        except Exception as exc:
            self.log(f"kill of job {job.record.job_id} failed: {exc}")

    @handles(FenceRequest)
    def _fence(self, req: FenceRequest, caller: Caller) -> Message:
        for job_id in req.job_ids:
            job = self.jobs.get(job_id)
            if job is not None and job.record.state != ProcState.EXITED:
                job.fence_at = req.until_monotonic or None
        return OkReply()

    @handles(SignalRequest)
    def _signal(self, req: SignalRequest, caller: Caller) -> Message:
        job = self._job(req.job_id)
        if job.record.state != ProcState.EXITED:
            job.cgroup.signal_all(req.signal)
        return JobReply(dataclasses.replace(job.record))

    @handles(ForgetRequest)
    def _forget(self, req: ForgetRequest, caller: Caller) -> Message:
        job = self.jobs.get(req.job_id)
        if job is not None:
            if job.record.state != ProcState.EXITED:
                raise FailedPrecondition(f"job {req.job_id} is still running")
            del self.jobs[req.job_id]
        return OkReply()

    @handles(ListRequest)
    def _list(self, req: ListRequest, caller: Caller) -> Message:
        return ListReply(tuple(dataclasses.replace(j.record) for j in self.jobs.values()))

    @handles(PingRequest)
    def _ping(self, req: PingRequest, caller: Caller) -> Message:
        return PingReply(os.getpid(), int(self.driver.version))

    @handles(SubscribeRequest)
    def _subscribe(self, req: SubscribeRequest, caller: Caller) -> Message:
        caller.conn.subscriber = True
        self.subscribers.add(caller.conn)
        return OkReply()

    @handles(ShutdownRequest)
    def _shutdown(self, req: ShutdownRequest, caller: Caller) -> Message:
        self.running = False
        return OkReply()

    def on_shutdown(self) -> None:
        """On shutdown, stop every job: nobody would supervise them afterwards."""
        self.flush_all()
        for job in self.jobs.values():
            if job.record.state != ProcState.EXITED:
                job.record.stop_requested = True
                with contextlib.suppress(Exception):
                    job.cgroup.kill_all()
        deadline = time.monotonic() + 10
        while any(j.record.state != ProcState.EXITED for j in self.jobs.values()) and time.monotonic() < deadline:
            for key, _ in self.sel.select(0.05):
                if key.data[0] == "pipe":
                    self.on_fd("pipe", key.fd)
            self.on_children()
            self.flush_dirty()   # the exits of the jobs just stopped, to a daemon that may still listen
        self._exec_shutdown()
        self.drop_standby()
        if self.persister is not None:
            self.persister.close()
        with contextlib.suppress(Exception):
            self.driver.cleanup()  # the empty capsa/ base cgroups go too (kept while any job cgroup is in them)
        self.zygote.stop()
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / "supervisor.pid").unlink()


_SIGNALS = {int(s) for s in signal.Signals}


def _write_status(job_dir: str, rec: JobRecord) -> None:
    # JobRecord.to_dict's content, built without asdict's deep copy (flat fields, one dict of ints).
    data = dict(vars(rec))
    data["state"] = rec.state.value
    data["start_stamps"] = dict(rec.start_stamps)
    tmp = job_dir + "/status.json.tmp"
    with contextlib.suppress(OSError):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            os.write(fd, json.dumps(data).encode())
        finally:
            os.close(fd)
        os.replace(tmp, job_dir + "/status.json")

