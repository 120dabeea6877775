"""The zygote: a single-threaded fork server for job processes.

The supervisor forks the zygote before it starts any thread, so every process made here is
a copy of a single-threaded process (copying a threaded one may copy a lock held by another
thread). For each job the zygote clones the job's PID 1 straight into its new mount, PID, UTS
and IPC namespaces with ``CLONE_PARENT`` (:mod:`capsa.runtime._clone`), so the supervisor is
its parent and gets its exit status. The job process joins its network namespace and runs stage
two (:mod:`capsa.runtime.stage2`): it builds the root while the supervisor makes the cgroups, joins
them once the go says they exist (charged and limited before any instruction of the job's own),
unshares its cgroup namespace, dies with the supervisor (``PR_SET_PDEATHSIG``) and execs. ``capsa exec`` and live capsule mounts are served
here too (:mod:`capsa.runtime.execproc`, :func:`_mount`).

Paying a clone here instead of a fresh interpreter is what keeps job start at a few
milliseconds (see docs/adr/0001-supervisor-and-zygote.md). While the supervisor is idle it asks
for a *standby* (``ZygoteStandby``): the same clone made ahead of its job, to which the supervisor
then sends the next start directly (:mod:`capsa.runtime.standby`, ADR-0018).
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from capsa import linux
from capsa.errors import CapsaError, InvalidArgument
from capsa.runtime import execproc, mounts, security, stage2, standby
from capsa.runtime._clone import clone_job
from capsa.runtime.cgroups.jobview import host_cgroup_mounts
from capsa.runtime.hostroot import HostRootTemplate, template_applies
from capsa.runtime.protocol import (
    Forked,
    Message,
    OkReply,
    StageFailed,
    ZygoteExec,
    ZygoteMount,
    ZygoteStandby,
    ZygoteStart,
    decode,
    encode,
    error_reply,
)
from capsa.runtime.standby import StandbyShared
from capsa.runtime.wire import recv_msg, write_frame

__all__ = ["JOB_NAMESPACES", "zygote_main"]

JOB_NAMESPACES = (
    linux.CLONE_NEWNS | linux.CLONE_NEWPID | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC | linux.CLONE_NEWCGROUP
)   # what a job gets: cloned with all but the cgroup namespace, which it unshares once in its cgroups


def zygote_main(sock: socket.socket) -> NoReturn:
    # Compile every seccomp profile once; a job only installs the bytes (≈ 0.1 ms). A child compiles
    # them (waited for here, before SIGCHLD is ignored): libseccomp never loads into the zygote.
    filters = security.compile_apart(security.PROFILE_NAMES)
    # Stage-one processes are reaped automatically; their status carries nothing.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    host_cgroup_mounts()   # parsed once here; each job's stage two inherits it (jobview)
    shared = StandbyShared()   # with the standbys: the template's current build, the pages a job writes
    host_root = HostRootTemplate(on_build=shared.publish_template)
    host_root.current()
    # Each job's PID 1 dies with the supervisor (its parent through CLONE_PARENT); this pidfd lets it
    # see a supervisor that died before it asked to (close-on-exec: the job never holds it).
    try:
        supervisor = os.pidfd_open(os.getppid())
    except OSError:
        supervisor = -1
    # What exists now lives as long as the zygote: no collection traverses it again, in the zygote or in
    # a clone (a traversal in a clone would copy every page it touches; see _job_process).
    gc.freeze()

    def run_job(msg: ZygoteStart, fds: list[int], template: int, in_root: Callable[[], None] | None) -> NoReturn:
        _job_process(msg, fds, filters, template, supervisor, in_root)

    while True:
        _idle_until_order(sock, host_root)
        try:
            frame, fds = recv_msg(sock)
        except (OSError, CapsaError):   # the supervisor is gone or garbled the stream: a new zygote starts
            os._exit(1)
        if frame is None:
            os._exit(0)
        received = time.monotonic_ns()
        try:
            _id, msg = decode(frame)
        except InvalidArgument as exc:   # the supervisor sent something we cannot run: answer where we can
            if len(fds) in (3, 4, 5):
                _report(fds[-1], f"bad start order: {exc}")
            elif len(fds) == 2:
                _write(fds[1], error_reply(exc))
            msg = None
        if isinstance(msg, ZygoteMount):   # a live capsule mount into a running job: fds = [pidfd, reply]
            _mount(msg, fds)
        elif isinstance(msg, ZygoteExec) and len(fds) in (4, 5):   # capsa exec: [pidfd, (stdin,) out, err, report]
            try:
                pid = os.fork()
            except OSError as exc:
                _report(fds[-1], f"fork: {exc}")
                pid = -1
            if pid == 0:
                sock.close()
                execproc.exec_stage_one(msg, fds, filters)
        elif isinstance(msg, ZygoteStart) and len(fds) in (4, 5):   # [stdin (-i/-t)], out, err, go, report
            template = host_root.current() if template_applies(msg.spec) else -1
            _start_job(sock, msg, fds, filters, received, template, supervisor)
        elif isinstance(msg, ZygoteStandby) and len(fds) == 1:   # [the standby's end of its link]
            _clone_standby(sock, fds[0], host_root, shared, run_job)
        for fd in fds:
            os.close(fd)


def _clone_standby(sock: socket.socket, link_fd: int, host_root: HostRootTemplate,
                   shared: StandbyShared, run_job: standby.JobRunner) -> None:
    """Clone a standby on ``link_fd`` (see capsa.runtime.standby); it says it is ready there itself."""
    template = host_root.current()
    try:
        pid = clone_job(standby.STANDBY_CLONE_FLAGS)
    except OSError:
        return   # our copy of the link closes: the supervisor sees EOF and tries again later
    if pid == 0:
        sock.close()
        for fd in host_root.watched():   # (the template itself is kept: the standby's root is cloned from it)
            os.close(fd)
        standby.standby_main(socket.socket(fileno=link_fd), run_job, template, host_root.build, shared)


def _idle_until_order(sock: socket.socket, host_root: HostRootTemplate) -> None:
    """Wait for the supervisor's next message; meanwhile keep the host-root template current, so that a
    change of the host (a mount, a file replaced in /etc) costs the next start nothing."""
    while True:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        watched = host_root.watched()
        for fd, mask in watched.items():
            poller.register(fd, mask)
        try:
            events = dict(poller.poll())
        except InterruptedError:
            continue
        template_events = {fd: mask for fd, mask in events.items() if fd in watched}
        if template_events:
            host_root.refresh(template_events)
        if sock.fileno() in events:
            return


def _start_job(sock: socket.socket, msg: ZygoteStart, fds: list[int], filters: dict[str, bytes],
               received_ns: int, host_root: int, supervisor: int) -> None:
    """Clone the job's PID 1 straight into its namespaces, as the supervisor's child (see _clone)."""
    report_w = fds[-1]
    try:
        pid = clone_job()
    except OSError as exc:
        _report(report_w, str(exc))
        return
    if pid == 0:
        sock.close()
        _job_process(msg, fds, filters, host_root, supervisor)
    # Written before our copy of the report pipe closes, so the supervisor has the PID before EOF.
    _write(report_w, Forked(pid, (received_ns, time.monotonic_ns())))


def _job_process(msg: ZygoteStart, fds: list[int], filters: dict[str, bytes], host_root: int,
                 supervisor: int, in_root: Callable[[], None] | None = None) -> NoReturn:
    """The job's PID 1 (in its new mount, PID, UTS and IPC namespaces): stdio, network, then stage two,
    which builds the root while the supervisor makes the cgroups, and joins them once the go says they exist."""
    started = time.monotonic_ns()
    # A short straight line to execve: no collection, whose traversal would copy pages shared with the zygote.
    gc.disable()
    # A job started with -i/-t gets its stdin first: a pipe's read end or its terminal (ADR-0013).
    *stdin_r, stdout_w, stderr_w, go_r, report_w = fds
    try:
        # Descriptors received over SCM_RIGHTS are not close-on-exec; the report
        # pipe must be, since its EOF is how the supervisor learns the exec happened.
        os.set_inheritable(report_w, False)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        spec = msg.spec
        stdin = stdin_r[0] if stdin_r else os.open("/dev/null", os.O_RDONLY)
        os.dup2(stdin, 0)
        os.dup2(stdout_w, 1)
        os.dup2(stderr_w, 2)
        for fd in (stdin, stdout_w, stderr_w):
            if fd > 2:
                os.close(fd)
        if spec.netns_path:  # the job's network namespace (before the root: a fresh /sys shows its devices)
            netns_fd = os.open(spec.netns_path, os.O_RDONLY | os.O_CLOEXEC)
            linux.setns(netns_fd, linux.CLONE_NEWNET)
            os.close(netns_fd)
    except BaseException as exc:
        _report(report_w, f"{type(exc).__name__}: {exc}" if not isinstance(exc, OSError) else str(exc))
        os._exit(127)

    def join_cgroups() -> tuple[list[str], int]:
        """Wait for the go, join the job's cgroups, then enter a cgroup namespace rooted there."""
        # The supervisor makes the job's cgroups while we build the root; it sends the files to join once
        # they exist. Its EOF without them: the start failed there (answered there), or it died.
        cgroup_procs = _await_go(go_r)
        if cgroup_procs is None:
            os._exit(127)
        released = time.monotonic_ns()
        # Before anything of the job runs: charged and limited from here on.
        for procs in cgroup_procs:
            fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        linux.unshare(linux.CLONE_NEWCGROUP)
        return [os.path.dirname(p) for p in cgroup_procs], released

    stage2.run_stage2(spec, report_w, filters[spec.seccomp], join_cgroups, (started,), host_root, supervisor,
                      in_root)


def _await_go(go_r: int) -> list[str] | None:
    """The cgroup files to join, newline-terminated, then NUL (one write); None at EOF before the NUL."""
    data = b""
    while not data.endswith(b"\0"):
        try:
            chunk = os.read(go_r, 4096)
        except InterruptedError:
            continue
        if not chunk:
            return None
        data += chunk
    os.close(go_r)
    return data[:-1].decode().splitlines()


def _mount(msg: ZygoteMount, fds: list[int]) -> None:
    """Run one attach/swap/detach (capsa.runtime.mounts, in this process) and answer on the reply fd.

    It runs here because this is the one single-threaded process: setns(CLONE_NEWNS) and the
    swap probe's fork must never happen in a threaded one. SIGCHLD is default while it runs so
    the probe's exit status can be waited for; other children's exits are reaped after.
    """
    reply: Message = OkReply()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        if len(fds) != 2:
            raise InvalidArgument(f"a mount request carries a pidfd and a reply fd, got {len(fds)} fds")
        pidfd = fds[0]
        # In this process, without a helper's fork: we are single-threaded, and mounts comes back
        # to our own namespace (or exits) before it returns.
        if msg.action == "attach":
            mounts.attach(pidfd, Path(msg.source), msg.target, create_target=msg.create_target, in_process=True)
        elif msg.action == "swap":
            mounts.swap(pidfd, Path(msg.source), msg.target, in_process=True)
        elif msg.action == "detach":
            mounts.detach(pidfd, msg.target, in_process=True)
        else:
            raise InvalidArgument(f"unknown mount action {msg.action!r}")
    except Exception as exc:  # a bad request must never take the zygote down
        reply = error_reply(exc)
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        _reap_exited_children()
    if len(fds) == 2:
        _write(fds[1], reply)


def _write(fd: int, msg: Message) -> None:
    with contextlib.suppress(OSError):
        write_frame(fd, encode(msg))


def _reap_exited_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _report(fd: int, message: str) -> None:
    _write(fd, StageFailed("stage1", 0, message))
