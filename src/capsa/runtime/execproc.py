"""A process exec'd into a running job (``capsa exec``), forked by the zygote.

The zygote forks *exec stage one*, which joins the job's cgroups (host paths, so before
leaving the host's mount namespace: the process is charged to the job from its first
page), then enters every namespace of the job at once through its pidfd
(``setns(pidfd, CLONE_NEW*)``, kernel ≥ 5.8) and forks: only a child of a process that
joined a PID namespace is *in* it. That child (*exec stage two*) is in the job's mount
namespace, whose root is the job's pivoted root — ``setns`` of a mount namespace moves
root and cwd to it — so no chroot is needed. It applies the job's rlimits, capabilities,
no_new_privs, user and (last) its precompiled seccomp filter, and execs. Stage one writes
stage two's PID to the report pipe and exits; stage two is re-parented to the supervisor
(the subreaper), which reaps it (docs/adr/0013-interactive-jobs-and-exec.md).
"""

from __future__ import annotations

import fcntl
import os
import signal
import termios
from typing import NoReturn

from capsa import linux
from capsa.runtime import security
from capsa.runtime.protocol import Forked, StageFailed, ZygoteExec, encode
from capsa.runtime.stage2 import StageError, _resolve_command
from capsa.runtime.wire import write_frame

__all__ = ["EXEC_NAMESPACES", "exec_stage_one"]

EXEC_NAMESPACES = (
    linux.CLONE_NEWNS | linux.CLONE_NEWPID | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC | linux.CLONE_NEWCGROUP
    | linux.CLONE_NEWNET
)


def exec_stage_one(msg: ZygoteExec, fds: list[int], filters: dict[str, bytes]) -> NoReturn:
    """In a fresh fork of the zygote: join, fork stage two, report its PID, exit."""
    pidfd, *stdin_r, stdout_w, stderr_w, report_w = fds   # stdin: exec -i (a pipe) or -t (a terminal)
    try:
        os.set_inheritable(report_w, False)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        stdin = stdin_r[0] if stdin_r else os.open("/dev/null", os.O_RDONLY)
        os.dup2(stdin, 0)
        os.dup2(stdout_w, 1)
        os.dup2(stderr_w, 2)
        for fd in (stdin, stdout_w, stderr_w):
            if fd > 2:
                os.close(fd)
        for procs in msg.cgroup_procs:
            fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        linux.setns(pidfd, EXEC_NAMESPACES)
        os.close(pidfd)
        pid = os.fork()
        if pid == 0:
            _stage_two(msg, report_w, filters[msg.spec.seccomp])
        write_frame(report_w, encode(Forked(pid)))
        os._exit(0)
    except BaseException as exc:
        _report(report_w, StageFailed("exec join", getattr(exc, "errno", 0) or 0, str(exc)))
        os._exit(127)


def _stage_two(msg: ZygoteExec, report_w: int, bpf: bytes) -> NoReturn:
    try:
        spec = msg.spec
        for sig in (signal.SIGPIPE, signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        # New session: a signal to the exec'd process's group never reaches the zygote's.
        os.setsid()
        if msg.tty:   # exec -t: the new session's controlling terminal is the one on fd 0
            try:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            except OSError as exc:
                raise StageError("controlling terminal", exc) from exc
        workdir = msg.workdir or spec.workdir
        try:
            os.chdir(workdir)
        except OSError as exc:
            raise StageError(f"workdir {workdir}", exc) from exc
        keep = security.DEFAULT_CAPABILITIES if spec.capabilities is None else frozenset(spec.capabilities)
        try:
            security.apply_rlimits()
            security.drop_capabilities(keep)
            security.set_no_new_privs()
        except OSError as exc:
            raise StageError("drop privileges", exc) from exc
        uid = spec.uid if msg.uid < 0 else msg.uid
        gid = (spec.gid if msg.uid < 0 else msg.uid) if msg.gid < 0 else msg.gid
        if uid or gid:
            try:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            except OSError as exc:
                raise StageError(f"user {uid}:{gid}", exc) from exc
        env = dict(spec.env)
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        env.setdefault("HOME", "/work")
        env.setdefault("HOSTNAME", spec.hostname)
        env.update(item.split("=", 1) for item in msg.env)  # type: ignore[misc]
        argv0 = _resolve_command(msg.argv[0], env["PATH"])
        try:
            security.install_bpf(bpf)   # last: after it only execve (and on failure write/_exit) runs
            os.execve(argv0, list(msg.argv), env)
        except OSError as exc:
            raise StageError(f"exec {msg.argv[0]}", exc) from exc
    except StageError as exc:
        _report(report_w, StageFailed(exc.step, exc.errno, str(exc)))
    except BaseException as exc:
        _report(report_w, StageFailed("exec", 0, f"{type(exc).__name__}: {exc}"))
    os._exit(127)


def _report(fd: int, failure: StageFailed) -> None:
    try:
        write_frame(fd, encode(failure))
    except OSError:
        pass
