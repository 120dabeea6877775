"""The supervisor's jobs: start through the zygote, read output, reap, stop, answer.

Every request handler takes a validated request dataclass and returns its reply (or answers
later through the ``Caller``); the loop, framing and error replies are :mod:`._loop`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import selectors
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capsa.errors import AlreadyExists, CapsaError, FailedPrecondition, NotFound, Timeout, from_os_error
from capsa.logs import JobLog, LogPersister, Stream
from capsa.runtime import cgroups
from capsa.runtime.devices import job_device_rules
from capsa.runtime.protocol import (
    FORKED_STAMPS,
    STAGE2_STAMPS,
    ErrorReply,
    FenceRequest,
    ForgetRequest,
    Forked,
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
    Stage2Stamps,
    StageFailed,
    StartFailed,
    StartRequest,
    StopRequest,
    SubscribeRequest,
    ZygoteMount,
    ZygoteStart,
    decode,
    error_reply,
)
from capsa.runtime.spec import JobSpec
from capsa.runtime.standby import STANDBY_IDLE_S
from capsa.runtime.supervisor._exec import ExecMixin
from capsa.runtime.supervisor._interactive import InteractiveMixin, open_stdio
from capsa.runtime.supervisor._links import (
    Caller,
    HostProcesses,
    Processes,
    Zygote,
    ZygoteLink,
    report_messages,
)
from capsa.runtime.supervisor._loop import EventLoop, handles
from capsa.runtime.supervisor._standby import StandbyMixin
from capsa.runtime.wire import FrameReader

__all__ = ["START_TIMEOUT_S", "Supervisor"]

_F_SETPIPE_SZ = 1031
_PIPE_BYTES = 1 << 20
_READ_CHUNK = 1 << 20
# A start not exec'd by then (a hung mount in stage two, a wedged zygote) is killed and answered
# StartFailed, so the daemon's wait is bounded without the daemon ever guessing. Counted from the
# request's arrival; a queue of thousands of starts drains in seconds.
START_TIMEOUT_S = 120.0
# An exit event waits until the job's log is finished (end record on disk), so a daemon that
# reads the log of a job it saw exit reads all of it. The persister's finished fd wakes the loop
# when a log finishes; a log that cannot be finished (disk failing) holds its event no longer
# than the limit.
_LOG_FINISH_LIMIT_S = 10.0
# The zygote does a live mount in its own process (runtime/mounts.py, in_process). One that does not
# answer by then (a path lookup hung in the job's root) costs the zygote: it is killed and replaced,
# as the forked mount helper it replaced was killed after the same time.
MOUNT_TIMEOUT_S = 30.0


@dataclass
class _Job:
    record: JobRecord
    spec: JobSpec
    log: JobLog
    cgroup: Any
    report_fd: int
    out_fds: set[int] = field(default_factory=set)
    report: FrameReader = field(default_factory=FrameReader)
    start_error: StageFailed | None = None
    waiter: Caller | None = None
    wait_status: int | None = None
    kill_at: float | None = None
    start_deadline: float | None = None
    received_ns: int = 0             # monotonic: when the start request arrived
    fence_at: float | None = None    # monotonic: a pool lease deadline (FenceRequest)
    stdin_fd: int = -1               # -i: the stdin pipe's write end; -t: the terminal's master (_interactive)
    tty: bool = False


class Supervisor(ExecMixin, InteractiveMixin, StandbyMixin, EventLoop):
    def __init__(self, home: Path, *, driver: Any = None, zygote: Zygote | None = None,
                 processes: Processes | None = None, persister: LogPersister | None = None,
                 standby_idle_s: float | None = STANDBY_IDLE_S) -> None:
        self.home = home
        self.run_dir = home / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(self.run_dir / "supervisor.sock", zygote or ZygoteLink())
        self.jobs: dict[str, _Job] = {}
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
                self.log(f"job {job.record.job_id} did not exec within {START_TIMEOUT_S:g}s; killing it")
                job.start_error = job.start_error or StageFailed(
                    "start", errno.ETIMEDOUT, f"the command was not exec'd within {START_TIMEOUT_S:g}s")
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

    # -- start -----------------------------------------------------------------------------------
    @handles(StartRequest)
    def _start(self, req: StartRequest, caller: Caller) -> Message | None:
        """Order the job's process from the zygote first, then make its cgroups and log while it is
        cloned; the job process waits on its go pipe, and joins its cgroups only once they exist
        (with their device rules). A failure before the go closes the pipe: the process exits unrun."""
        received = time.monotonic_ns()
        stamps = {"submitted": req.submitted_ns, "recorded": req.recorded_ns, "received": received}
        spec = req.spec
        if spec.job_id in self.jobs:
            raise AlreadyExists(f"job {spec.job_id} already exists")
        # Before the order: the job's process builds its root under them while we make its cgroups.
        try:
            _make_job_dirs(spec.job_dir)
        except OSError as exc:   # a full disk is the usual cause: say so, naming the path (exit 9)
            raise from_os_error(exc, Path(spec.job_dir), what=f"job {spec.job_id}") from exc
        stdio = open_stdio(spec.stdin, spec.tty_size)   # output pipes; a stdin pipe (-i) or a terminal (-t): ADR-0013
        rep_r, rep_w = os.pipe2(os.O_CLOEXEC)
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        # The zygote owns the job's ends from here (it closes ours once they are sent).
        child_fds = [*stdio.child_fds, go_r, rep_w]
        zygote_error: Exception | None = None
        standby_pid = 0   # sent to a standby (capsa.runtime.standby): its PID is the job's, known now
        try:
            order = ZygoteStart(spec)
            standby_pid = self.start_on_standby(order, child_fds)
            if not standby_pid:
                self.zygote.submit(order, child_fds)
        except Exception as exc:   # our write ends close with it: the report EOF answers the start
            zygote_error = exc
            for fd in child_fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        stamps["sent"] = time.monotonic_ns()
        try:
            cg = self.driver.create(spec.job_id, _limits(spec))
            try:   # before any process joins: the job may open only its minimal /dev and what the spec adds
                cg.device_rules(job_device_rules(spec))
                stamps["cgroup"] = time.monotonic_ns()
                assert self.persister is not None
                log = self.persister.open(spec.job_id, Path(spec.log_dir), max_bytes=spec.log_max_bytes)
                stamps["log"] = time.monotonic_ns()
            except BaseException:
                with contextlib.suppress(Exception):
                    cg.remove()
                raise
        except BaseException:
            os.close(go_w)   # EOF before the go: the job process exits without running anything
            for fd, _kind in stdio.read_fds:
                os.close(fd)
            if stdio.stdin_fd not in (-1, *(fd for fd, _kind in stdio.read_fds)):
                os.close(stdio.stdin_fd)
            self._abandon_start(rep_r)
            self._forget_pid(standby_pid)   # (a zygote's clone names itself on the report pipe instead)
            raise
        # The go: the files to join, whole in one write (far below PIPE_BUF, into an empty pipe).
        with contextlib.suppress(OSError):   # a job process already gone fails at its report pipe
            os.write(go_w, "".join(f"{p}\n" for p in cg.join_files()).encode() + b"\0")
        os.close(go_w)
        stamps["go"] = time.monotonic_ns()
        for fd, _kind in stdio.read_fds:
            if not stdio.tty:
                with contextlib.suppress(OSError):
                    fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
            os.set_blocking(fd, False)
        os.set_blocking(rep_r, False)
        record = JobRecord(job_id=spec.job_id, started_ns=time.time_ns(), cgroup=str(cg.name), start_stamps=stamps)
        job = _Job(record=record, spec=spec, log=log, cgroup=cg, report_fd=rep_r,
                   out_fds={fd for fd, _kind in stdio.read_fds}, stdin_fd=stdio.stdin_fd, tty=stdio.tty,
                   waiter=caller, received_ns=received,
                   start_deadline=time.monotonic() + START_TIMEOUT_S)
        if zygote_error is not None:
            job.start_error = StageFailed("launch", 0, f"zygote unavailable: {zygote_error}")
        self.jobs[spec.job_id] = job
        if standby_pid:
            record.pid = standby_pid
            self.by_pid[standby_pid] = spec.job_id
        for fd, kind in (*stdio.read_fds, (rep_r, "report")):
            self.by_fd[fd] = (spec.job_id, kind)
            self.sel.register(fd, selectors.EVENT_READ, ("pipe", None))
        return None   # answered at exec (report pipe EOF) or failure

    def _abandon_start(self, rep_r: int) -> None:
        """A start that failed after its order went to the zygote: its report pipe names the PID
        of the process cloned for it (which exits at once), so that its exit is not kept."""
        os.set_blocking(rep_r, False)
        self.abandoned[rep_r] = FrameReader()
        self.sel.register(rep_r, selectors.EVENT_READ, ("abandoned", None))

    def _on_abandoned_report(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            for msg in report_messages(self.abandoned[fd], data, "start"):
                if isinstance(msg, Forked) and msg.pid > 0 and self.early_exits.pop(msg.pid, None) is None:
                    self.abandoned_pids.add(msg.pid)
            return
        del self.abandoned[fd]
        self.sel.unregister(fd)
        os.close(fd)

    def _on_report(self, job: _Job, data: bytes) -> None:
        for msg in report_messages(job.report, data, "start"):
            if isinstance(msg, Forked) and msg.pid > 0:
                job.record.start_stamps.update(zip(FORKED_STAMPS, msg.stamps, strict=False))
                job.record.pid = msg.pid
                self.by_pid[msg.pid] = job.record.job_id
                if msg.pid in self.early_exits:
                    job.wait_status = self.early_exits.pop(msg.pid)
            elif isinstance(msg, Stage2Stamps):
                job.record.start_stamps.update(zip(STAGE2_STAMPS, msg.stamps, strict=False))
            elif isinstance(msg, StageFailed) and job.start_error is None:
                job.start_error = msg

    def _on_report_eof(self, job: _Job) -> None:
        job.start_deadline = None
        if job.start_error is None and job.record.pid:
            job.record.state = ProcState.RUNNING
            # Request received -> the CLOEXEC report pipe closed, i.e. the user's command was exec'd.
            now = job.record.start_stamps["exec"] = time.monotonic_ns()
            job.record.exec_latency_ns = now - job.received_ns
            if job.waiter is not None:
                self.answer(job.waiter, JobReply(dataclasses.replace(job.record)))
                job.waiter = None
            self._maybe_finish(job)
            return
        err = job.start_error or StageFailed("launch", 0, "job process vanished before exec")
        job.start_error = err
        job.record.reason = f"start failed: {err.message}"
        if job.waiter is not None:
            exec_failed = err.step == "exec" or err.step.startswith("exec ")
            self.answer(job.waiter, StartFailed(err.step, err.errno, err.message,
                                                command_not_found=exec_failed and err.errno == errno.ENOENT,
                                                exec_failed=exec_failed))
            job.waiter = None
        if not job.record.pid:
            job.wait_status = job.wait_status if job.wait_status is not None else 127 << 8
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
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
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

    def _drain_report(self, job: _Job) -> None:
        while job.report_fd != -1:
            fd = job.report_fd
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
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

    def _pause_output(self, job: _Job, wake_fd: int) -> None:
        """Back-pressure (ADR-0004): stop reading the job's pipes, so it blocks in write(2), until wake_fd fires."""
        for fd in job.out_fds:
            with contextlib.suppress(KeyError):
                self.sel.unregister(fd)
        if wake_fd not in self.by_fd:
            self.by_fd[wake_fd] = (job.record.job_id, "resume")
            self.sel.register(wake_fd, selectors.EVENT_READ, ("pipe", None))

    def _resume_output(self, job: _Job) -> None:
        wake_fd = job.log.resume()
        if self.by_fd.pop(wake_fd, None) is not None:
            self.sel.unregister(wake_fd)
        for fd in job.out_fds:
            if fd not in self.sel.get_map():
                self.sel.register(fd, selectors.EVENT_READ, ("pipe", None))

    # -- end of a job --------------------------------------------------------------------------------
    def _maybe_finish(self, job: _Job) -> None:
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
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
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
    def _job(self, job_id: str) -> _Job:
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

    def _kill_cgroup(self, job: _Job) -> None:
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


def _limits(spec: JobSpec) -> Any:
    r = spec.resources
    return cgroups.Limits(
        cpu_percent=r.cpu_percent,
        cpuset=r.cpuset,
        memory_bytes=r.memory_bytes,
        pids_max=r.pids_max,
        io_bps=r.io_bps,
        io_path=Path(spec.job_dir) if r.io_bps else None,
    )


def _make_job_dirs(job_dir: str) -> None:
    """``job_dir`` and its root/, work/ and logs/ (parents as needed; existing ones are fine)."""
    try:
        os.mkdir(job_dir)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(job_dir, exist_ok=True)
    for sub in ("/root", "/work", "/logs"):
        try:
            os.mkdir(job_dir + sub)
        except FileExistsError:
            pass


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

