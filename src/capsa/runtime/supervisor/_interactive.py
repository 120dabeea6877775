"""Stdin and terminals of jobs started with ``-i``/``-t`` (ADR-0013): made, written, resized, closed here.

A ``-i`` job's stdin is a pipe whose write end the supervisor keeps; a ``-t`` job gets a
pseudo-terminal whose *master* the supervisor keeps (the slave is the job's stdin, stdout and
stderr and, taken by stage two with TIOCSCTTY, its controlling terminal). Either way the job's
stdin lives exactly as long as the supervisor and the job: a client that detaches, or a daemon
that restarts, leaves it untouched. What a terminal job prints is read from the master like any
job's pipe and goes to the job's lossless log as stdout (one stream: a terminal merges the two).

Input never blocks the loop: an ``InputRequest`` writes what the pipe or terminal takes now and
answers how much; the daemon sends the rest again.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import os
import struct
import termios
from dataclasses import dataclass, field
from typing import Any

from capsa.errors import FailedPrecondition, NotFound
from capsa.runtime.protocol import InputReply, InputRequest, Message, OkReply, ProcState, ResizeRequest
from capsa.runtime.supervisor._links import Caller
from capsa.runtime.supervisor._loop import handles

__all__ = ["InteractiveMixin", "Stdio", "open_stdio"]


@dataclass
class Stdio:
    """The descriptors of one job start: what goes to the zygote, what the supervisor reads and writes."""

    child_fds: list[int]                   # for ZygoteStart, before the report pipe: [stdin], stdout, stderr
    read_fds: list[tuple[int, str]] = field(default_factory=list)   # (fd, "out"|"err") the supervisor reads
    stdin_fd: int = -1                     # the pipe's write end or the terminal's master; -1: none
    tty: bool = False


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def open_stdio(stdin: str, tty_size: tuple[int, ...]) -> Stdio:
    """Pipes for a plain job or exec; plus a stdin pipe for ``-i`` ("pipe"); a pseudo-terminal for ``-t`` ("tty")."""
    if stdin == "tty":
        master, slave = os.openpty()
        try:
            os.set_inheritable(master, False)
            rows, cols = tty_size
            if rows and cols:
                _set_winsize(master, rows, cols)
            os.set_blocking(master, False)
            # The zygote closes each fd it is sent: three distinct descriptors of the one slave.
            child = [slave, os.dup(slave), os.dup(slave)]
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        return Stdio(child_fds=child, read_fds=[(master, "out")], stdin_fd=master, tty=True)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    stdio = Stdio(child_fds=[out_w, err_w], read_fds=[(out_r, "out"), (err_r, "err")])
    if stdin == "pipe":
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(in_w, False)
        stdio.child_fds.insert(0, in_r)
        stdio.stdin_fd = in_w
    return stdio


class InteractiveMixin:
    """Mixed into ``Supervisor``: its ``jobs`` (each ``_Job`` has ``stdin_fd`` and ``tty``)."""

    jobs: dict[str, Any]

    def _interactive_job(self, job_id: str) -> Any:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"unknown job {job_id}")
        if job.spec.stdin == "":
            raise FailedPrecondition(f"job {job_id} was not started with -i or -t: it takes no input")
        if job.record.state == ProcState.EXITED or job.wait_status is not None:
            raise FailedPrecondition(f"job {job_id} has ended")
        return job

    def _exec_input_target(self, job_id: str, exec_id: int) -> Any:
        raise NotImplementedError   # ExecMixin's

    @handles(InputRequest)
    def _input(self, req: InputRequest, caller: Caller) -> Message:
        # ``job`` is the job, or a streamed exec in it: both have ``stdin_fd`` and ``tty``
        job = self._exec_input_target(req.job_id, req.exec_id) if req.exec_id else self._interactive_job(req.job_id)
        if job.stdin_fd == -1:
            return InputReply(0, closed=True, tty=job.tty)
        data = base64.b64decode(req.data_b64) if req.data_b64 else b""
        accepted = 0
        if data:
            try:
                accepted = os.write(job.stdin_fd, data)
            except BlockingIOError:
                accepted = 0
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.EIO):
                    raise
                self._close_stdin(job)   # the job closed its stdin (or its terminal hung up)
                return InputReply(0, closed=True, tty=job.tty)
        if req.eof and accepted == len(data) and not job.tty:
            self._close_stdin(job)
            return InputReply(accepted, closed=True, tty=False)
        return InputReply(accepted, tty=job.tty)

    @handles(ResizeRequest)
    def _resize(self, req: ResizeRequest, caller: Caller) -> Message:
        job = self._exec_input_target(req.job_id, req.exec_id) if req.exec_id else self._interactive_job(req.job_id)
        if not job.tty:
            raise FailedPrecondition(f"job {req.job_id} has no terminal (started without -t)")
        if job.stdin_fd != -1:
            _set_winsize(job.stdin_fd, req.rows, req.cols)   # the kernel sends the foreground SIGWINCH
        return OkReply()

    def _close_stdin(self, job: Any) -> None:
        """Close a ``-i`` pipe's write end (the job reads EOF). A terminal's master is closed as output."""
        if job.stdin_fd != -1 and not job.tty:
            with contextlib.suppress(OSError):
                os.close(job.stdin_fd)
        if not job.tty:
            job.stdin_fd = -1

    def _stdin_output_closed(self, job: Any, fd: int) -> None:
        """The output fd ``fd`` of ``job`` was closed: a terminal's master is its stdin too."""
        if job.tty and fd == job.stdin_fd:
            job.stdin_fd = -1
