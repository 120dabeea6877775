"""``capsa exec`` in the supervisor: hand the zygote a pidfd and pipes, collect output, reap, answer.

The exec'd process is forked by the zygote (:mod:`capsa.runtime.execproc`) and re-parented
to us — we are the subreaper — so its exit status comes through the same ``on_children``
as every job's. The request is answered once it was reaped *and* its pipes hit EOF, with
its exit code (128+N for a signal) and output. It dies with its job: it is in the job's
PID namespace (whose PID 1 exiting kills it) and in its cgroup (killed with it).

A *streamed* exec (``ExecRequest.stream``, what ``capsa exec`` uses) is answered at once with
``ExecStarted``, then gets its output as ``ExecOutput`` frames as it is read, then ``ExecReply``.
It may have a stdin pipe or a terminal (``-i``/``-t``), written and resized through the same
``InputRequest``/``ResizeRequest`` as a ``-i``/``-t`` job (by ``exec_id``). It lives as long as the
connection that asked for it: when that drops, its stdin is closed (a terminal hangs up: SIGHUP)
and its output is read and dropped. While the caller's connection holds more than
``_STREAM_HIGH`` unsent bytes the exec's output is not read (it blocks in write(2)).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import itertools
import os
import selectors
import time
from dataclasses import dataclass, field
from typing import Any

from capsa.errors import FailedPrecondition, NotFound
from capsa.runtime.protocol import (
    ExecOutput,
    ExecReply,
    ExecRequest,
    ExecStarted,
    Forked,
    Message,
    ProcState,
    StageFailed,
    StartFailed,
    ZygoteExec,
)
from capsa.runtime.supervisor._interactive import open_stdio
from capsa.runtime.supervisor._links import Caller, Connection, read_ready, report_messages
from capsa.runtime.supervisor._loop import handles
from capsa.runtime.wire import FrameReader

__all__ = ["EXEC_OUTPUT_LIMIT", "ExecMixin"]

# Output kept per stream of one exec (the reply is one frame); beyond it is read and dropped,
# so the process never blocks on a full pipe, and the reply says ``truncated``.
EXEC_OUTPUT_LIMIT = 8 << 20
_READ = 1 << 16
_STREAM_HIGH = 1 << 20   # unsent bytes on the caller's connection: stop reading the exec's output


@dataclass
class _Exec:
    caller: Caller
    job_id: str
    report_fd: int
    out_fds: dict[int, bytearray] = field(default_factory=dict)
    report: FrameReader = field(default_factory=FrameReader)
    pid: int = 0
    wait_status: int | None = None
    failure: StageFailed | None = None
    truncated: bool = False
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    received_ns: int = 0        # monotonic: when the request arrived
    exec_latency_ns: int = 0    # request -> the CLOEXEC report pipe closed, i.e. the command was exec'd
    exec_id: int = 0
    stream: bool = False        # output goes to the caller as it is read (ExecOutput), not in the reply
    stdin_fd: int = -1          # -i: the stdin pipe's write end; -t: the terminal's master
    tty: bool = False
    kinds: dict[int, int] = field(default_factory=dict)   # output fd -> 1 (stdout) | 2 (stderr)
    takes_input: bool = False   # started with a stdin pipe or a terminal
    paused: bool = False        # output not read until the caller's connection drains
    done: bool = False


class ExecMixin:
    """Mixed into ``Supervisor`` (its ``jobs``, ``sel``, ``zygote``, ``processes``, ``early_exits``)."""

    jobs: dict[str, Any]
    sel: selectors.BaseSelector
    zygote: Any
    processes: Any
    early_exits: dict[int, int]

    def _exec_init(self) -> None:
        self.execs_by_fd: dict[int, _Exec] = {}
        self.execs_by_pid: dict[int, _Exec] = {}
        self.execs_by_id: dict[int, _Exec] = {}   # streamed execs, for their input and resizes
        self._exec_ids = itertools.count(1)

    @handles(ExecRequest)
    def _exec(self, req: ExecRequest, caller: Caller) -> Message | None:
        job = self.jobs.get(req.job_id)
        if job is None:
            raise NotFound(f"unknown job {req.job_id}")
        if job.record.state != ProcState.RUNNING or job.wait_status is not None or not job.record.pid:
            raise FailedPrecondition(f"job {req.job_id} is not running")
        try:
            pidfd = self.processes.pidfd(job.record.pid)   # our unreaped child: the PID is still the job's
        except ProcessLookupError as exc:
            raise FailedPrecondition(f"job {req.job_id} is not running") from exc
        received = time.monotonic_ns()
        try:
            stdio = open_stdio(req.stdin, req.tty_size)
        except BaseException:
            os.close(pidfd)
            raise
        rep_r, rep_w = os.pipe2(os.O_CLOEXEC)
        ex = _Exec(caller=caller, job_id=req.job_id, report_fd=rep_r, received_ns=received, stream=req.stream,
                   stdin_fd=stdio.stdin_fd, tty=stdio.tty, takes_input=bool(req.stdin))
        for fd, kind in stdio.read_fds:
            ex.out_fds[fd] = ex.stdout if kind == "out" else ex.stderr
            ex.kinds[fd] = 1 if kind == "out" else 2
        for fd in (*ex.out_fds, rep_r):
            os.set_blocking(fd, False)
            self.execs_by_fd[fd] = ex
            self.sel.register(fd, selectors.EVENT_READ, ("exec", None))
        if req.stream:
            ex.exec_id = next(self._exec_ids)
            self.execs_by_id[ex.exec_id] = ex
            self.answer(caller, ExecStarted(ex.exec_id, ex.tty))  # type: ignore[attr-defined]
        order = ZygoteExec(job.spec, tuple(str(p) for p in job.cgroup.join_files()), req.argv, req.env,
                           req.uid, req.gid, req.workdir, tty=stdio.tty)
        child_fds = [pidfd, *stdio.child_fds, rep_w]
        try:
            self.zygote.submit(order, child_fds)
        except Exception as exc:   # our ends close with it; the report EOF answers the request
            ex.failure = StageFailed("launch", 0, f"zygote unavailable: {exc}")
            for fd in child_fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        return None

    def _on_exec_fd(self, fd: int) -> None:
        ex = self.execs_by_fd.get(fd)
        if ex is None:
            return
        data = read_ready(fd, _READ)
        if data is None:
            return
        if data:
            if fd == ex.report_fd:
                self._exec_report(ex, data)
                return
            if ex.stream:
                self._exec_forward(ex, ex.kinds[fd], data)
                return
            buf = ex.out_fds[fd]
            room = EXEC_OUTPUT_LIMIT - len(buf)
            if len(data) > room:
                ex.truncated = True
            buf += data[:max(room, 0)]
            return
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(fd)
        os.close(fd)
        del self.execs_by_fd[fd]
        if fd == ex.stdin_fd:   # a terminal's master is its output and its input
            ex.stdin_fd = -1
        if fd == ex.report_fd:
            ex.report_fd = -1
            ex.exec_latency_ns = time.monotonic_ns() - ex.received_ns
            if ex.pid == 0 and ex.failure is None:
                ex.failure = StageFailed("launch", 0, "the exec'd process vanished before exec")
        else:
            del ex.out_fds[fd]
        self._exec_maybe_done(ex)

    def _exec_report(self, ex: _Exec, data: bytes) -> None:
        for msg in report_messages(ex.report, data, "exec"):
            if isinstance(msg, Forked) and msg.pid > 0:
                ex.pid = msg.pid
                self.execs_by_pid[msg.pid] = ex
                if msg.pid in self.early_exits:
                    ex.wait_status = self.early_exits.pop(msg.pid)
            elif isinstance(msg, StageFailed) and ex.failure is None:
                ex.failure = msg

    def _exec_reaped(self, pid: int, status: int) -> bool:
        """``on_children``'s hook: True if ``pid`` was an exec'd process."""
        ex = self.execs_by_pid.get(pid)
        if ex is None:
            return False
        ex.wait_status = status
        self._exec_maybe_done(ex)
        return True

    def _exec_maybe_done(self, ex: _Exec) -> None:
        if ex.report_fd != -1 or ex.out_fds or ex.done:
            return
        if ex.pid and ex.wait_status is None:
            return
        ex.done = True
        self.execs_by_pid.pop(ex.pid, None)
        self.execs_by_id.pop(ex.exec_id, None)
        if ex.stdin_fd != -1:
            with contextlib.suppress(OSError):
                os.close(ex.stdin_fd)
            ex.stdin_fd = -1
        if ex.failure is not None:
            step = ex.failure.step
            exec_failed = step == "exec" or step.startswith("exec ")
            reply: Message = StartFailed(step, ex.failure.errno, ex.failure.message,
                                         command_not_found=exec_failed and ex.failure.errno == errno.ENOENT,
                                         exec_failed=exec_failed)
        else:
            code = os.waitstatus_to_exitcode(ex.wait_status or 0)
            sig = -code if code < 0 else 0
            job = self.jobs.get(ex.job_id)
            oom = False
            if sig == 9 and job is not None:
                with contextlib.suppress(Exception):
                    oom = bool(job.cgroup.oom_killed())
            reply = ExecReply(ex.pid, 128 + sig if sig else code, sig,
                              base64.b64encode(bytes(ex.stdout)).decode(),
                              base64.b64encode(bytes(ex.stderr)).decode(), oom, ex.truncated, ex.exec_latency_ns)
        self.answer(ex.caller, reply)  # type: ignore[attr-defined]

    # -- streamed execs --------------------------------------------------------------------------
    def _exec_forward(self, ex: _Exec, stream: int, data: bytes) -> None:
        conn = ex.caller.conn
        if conn.closed:   # its caller is gone: the output is read (the process never blocks) and dropped
            return
        self.answer(ex.caller, ExecOutput(stream, base64.b64encode(data).decode()))  # type: ignore[attr-defined]
        if len(conn.out) > _STREAM_HIGH and not conn.closed:
            ex.paused = True
            for fd in ex.out_fds:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(fd)

    def _exec_resume(self, ex: _Exec) -> None:
        ex.paused = False
        for fd in ex.out_fds:
            if fd not in self.sel.get_map():
                self.sel.register(fd, selectors.EVENT_READ, ("exec", None))

    def on_flushed(self, conn: Connection) -> None:
        """The loop sent what it could to ``conn``: resume the streamed execs it was holding back."""
        if len(conn.out) <= _STREAM_HIGH // 2:
            for ex in list(self.execs_by_id.values()):
                if ex.paused and ex.caller.conn is conn:
                    self._exec_resume(ex)

    def on_conn_closed(self, conn: Connection) -> None:
        """A caller went away: its streamed execs lose their stdin (a terminal hangs up) and their output."""
        for ex in list(self.execs_by_id.values()):
            if ex.caller.conn is not conn:
                continue
            if ex.paused:
                self._exec_resume(ex)
            if ex.stdin_fd != -1:
                fd, ex.stdin_fd = ex.stdin_fd, -1
                if ex.tty:   # the master is also its output: closing it is the hang-up (SIGHUP)
                    with contextlib.suppress(KeyError, ValueError):
                        self.sel.unregister(fd)
                    self.execs_by_fd.pop(fd, None)
                    ex.out_fds.pop(fd, None)
                os.close(fd)
            self._exec_maybe_done(ex)

    def _exec_input_target(self, job_id: str, exec_id: int) -> _Exec:
        ex = self.execs_by_id.get(exec_id)
        if ex is None or ex.job_id != job_id:
            raise NotFound(f"no running exec {exec_id} in job {job_id}")
        if not ex.takes_input:
            raise FailedPrecondition(f"exec {exec_id} was started without -i or -t: it takes no input")
        return ex

    def _exec_shutdown(self) -> None:
        for fd in list(self.execs_by_fd):
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.sel.unregister(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        self.execs_by_fd.clear()
