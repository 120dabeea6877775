"""The supervisor's job starts: the order to a standby or the zygote, then the cgroups and log, the report.

A start sends its order first (to a ready standby, else queued for the zygote) and makes the job's
cgroups (with their device rules) and opens its log while the job's process builds its root; that
process waits on its go pipe and joins the cgroups only once they exist. A failure before the go
closes the pipe, so the process exits unrun. The start is answered at exec (the report pipe's EOF)
or with the failure the report names. See docs/adr/0001-supervisor-and-zygote.md and ADR-0018.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capsa.errors import AlreadyExists, from_os_error
from capsa.logs import JobLog, LogPersister
from capsa.runtime import cgroups
from capsa.runtime.devices import job_device_rules
from capsa.runtime.protocol import (
    FORKED_STAMPS,
    STAGE2_STAMPS,
    Forked,
    JobRecord,
    JobReply,
    Message,
    ProcState,
    Stage2Stamps,
    StageFailed,
    StartFailed,
    StartRequest,
    ZygoteStart,
)
from capsa.runtime.spec import JobSpec
from capsa.runtime.supervisor._interactive import open_stdio
from capsa.runtime.supervisor._links import Caller, read_ready, report_messages
from capsa.runtime.supervisor._loop import handles
from capsa.runtime.wire import FrameReader

__all__ = ["START_TIMEOUT_S", "Job", "StartMixin"]

_F_SETPIPE_SZ = 1031
_PIPE_BYTES = 1 << 20
# A start not exec'd by then (a hung mount in stage two, a wedged zygote) is killed and answered
# StartFailed, so the daemon's wait is bounded without the daemon ever guessing. Counted from the
# request's arrival; a queue of thousands of starts drains in seconds.
START_TIMEOUT_S = 120.0


@dataclass
class Job:
    """What the supervisor keeps of one job, from its start to its forget."""

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


class StartMixin:
    """Mixed into ``Supervisor`` (its ``jobs``, ``by_pid``, ``by_fd``, ``sel``, ``zygote``, ``driver`` ...)."""

    jobs: dict[str, Job]
    by_pid: dict[int, str]
    by_fd: dict[int, tuple[str, str]]
    sel: selectors.BaseSelector
    zygote: Any
    driver: Any
    persister: LogPersister | None
    early_exits: dict[int, int]
    abandoned: dict[int, FrameReader]
    abandoned_pids: set[int]

    # The Supervisor's and StandbyMixin's (declared, not defined: a definition here would shadow theirs).
    answer: Callable[[Caller, Message], None]
    start_on_standby: Callable[[ZygoteStart, list[int]], int]
    _forget_pid: Callable[[int], None]
    _maybe_finish: Callable[[Job], None]

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
        job = Job(record=record, spec=spec, log=log, cgroup=cg, report_fd=rep_r,
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
        data = read_ready(fd)
        if data is None:
            return
        if data:
            for msg in report_messages(self.abandoned[fd], data, "start"):
                if isinstance(msg, Forked) and msg.pid > 0 and self.early_exits.pop(msg.pid, None) is None:
                    self.abandoned_pids.add(msg.pid)
            return
        del self.abandoned[fd]
        self.sel.unregister(fd)
        os.close(fd)

    def _on_report(self, job: Job, data: bytes) -> None:
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

    def _on_report_eof(self, job: Job) -> None:
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
