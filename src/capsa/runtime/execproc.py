"""A process exec'd into a running job (``capsa exec``), forked by the zygote.

The zygote forks *exec stage one*, which joins the job's cgroups (host paths, so before
leaving the host's mount namespace: the process is charged to the job from its first
page), then enters every namespace of the job at once through its pidfd
(``setns(pidfd, CLONE_NEW*)``, kernel ≥ 5.8). Joining a mount namespace moves root and cwd
to its root — the job's pivoted root — so no chroot is needed. Only a child of a process
that joined a PID namespace is *in* it, so the command is started as stage one's child:

* usually (no terminal) stage one applies the job's confinement to *itself* — working
  directory, rlimits, capabilities, no_new_privs, user and (last) the precompiled seccomp
  filter, all inherited across fork and exec — and ``posix_spawn``s the command (glibc's
  vfork-style clone: no page-table copy of this Python process, no Python in the child);
* for ``exec -t`` it forks *stage two*, which takes a new session and the terminal as its
  controlling terminal (TIOCSCTTY, which posix_spawn cannot do), applies the same
  confinement and execs.

Stage one writes the command's PID to the report pipe and exits; the command is re-parented
to the supervisor (the subreaper), which reaps it (docs/adr/0013-interactive-jobs-and-exec.md).
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

# Reset to their defaults in the exec'd process (the zygote ignores or handles some of them).
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGXFSZ)

EXEC_NAMESPACES = (
    linux.CLONE_NEWNS | linux.CLONE_NEWPID | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC | linux.CLONE_NEWCGROUP
    | linux.CLONE_NEWNET
)


def exec_stage_one(msg: ZygoteExec, fds: list[int], filters: dict[str, bytes]) -> NoReturn:
    """In a fresh fork of the zygote: join, start the command in the job's PID namespace, report its PID, exit."""
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
    except BaseException as exc:
        _report(report_w, StageFailed("exec join", getattr(exc, "errno", 0) or 0, str(exc)))
        os._exit(127)
    if msg.tty:
        _fork_stage_two(msg, report_w, filters[msg.spec.seccomp])
    _spawn(msg, report_w, filters[msg.spec.seccomp])


def _spawn(msg: ZygoteExec, report_w: int, bpf: bytes) -> NoReturn:
    """The usual exec (no terminal): harden *this* process, then posix_spawn the command.

    Everything the exec'd process must have — working directory, rlimits, capabilities,
    no_new_privs, user, seccomp filter — is inherited across fork and exec, so stage one applies
    it to itself and glibc's posix_spawn (a CLONE_VM|CLONE_VFORK child: no copy of this Python
    process's page tables, no copy-on-write faults) only takes a new session, resets the signals
    and execs. Only a child of a process that joined a PID namespace is in it: stage one has
    joined, so the command is the job's. Both seccomp profiles allow this clone (no namespace
    flags) and answer clone3 with ENOSYS, which glibc falls back from.
    """
    try:
        argv0, env = _harden(msg, bpf)
        try:
            pid = os.posix_spawn(argv0, list(msg.argv), env, setsid=True, setsigmask=(), setsigdef=_DEFAULT_SIGNALS)
        except OSError as exc:
            raise StageError(f"exec {msg.argv[0]}", exc) from exc
        write_frame(report_w, encode(Forked(pid)))
        os._exit(0)
    except StageError as exc:
        _report(report_w, StageFailed(exc.step, exc.errno, str(exc)))
    except BaseException as exc:
        _report(report_w, StageFailed("exec", 0, f"{type(exc).__name__}: {exc}"))
    os._exit(127)


def _fork_stage_two(msg: ZygoteExec, report_w: int, bpf: bytes) -> NoReturn:
    """exec -t: the process must take its terminal (TIOCSCTTY) after setsid, so it is a forked stage two."""
    try:
        pid = os.fork()
        if pid == 0:
            _stage_two(msg, report_w, bpf)
        write_frame(report_w, encode(Forked(pid)))
        os._exit(0)
    except BaseException as exc:
        _report(report_w, StageFailed("exec join", getattr(exc, "errno", 0) or 0, str(exc)))
        os._exit(127)


def _stage_two(msg: ZygoteExec, report_w: int, bpf: bytes) -> NoReturn:
    try:
        for sig in _DEFAULT_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        # New session: a signal to the exec'd process's group never reaches the zygote's.
        os.setsid()
        if msg.tty:   # exec -t: the new session's controlling terminal is the one on fd 0
            try:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            except OSError as exc:
                raise StageError("controlling terminal", exc) from exc
        argv0, env = _harden(msg, bpf)
        try:
            os.execve(argv0, list(msg.argv), env)
        except OSError as exc:
            raise StageError(f"exec {msg.argv[0]}", exc) from exc
    except StageError as exc:
        _report(report_w, StageFailed(exc.step, exc.errno, str(exc)))
    except BaseException as exc:
        _report(report_w, StageFailed("exec", 0, f"{type(exc).__name__}: {exc}"))
    os._exit(127)


def _harden(msg: ZygoteExec, bpf: bytes) -> tuple[str, dict[str, str]]:
    """The job's confinement on this process, seccomp last; the command's path and environment."""
    spec = msg.spec
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
        security.install_bpf(bpf)   # last: after it only the spawn/execve (and on failure write/_exit) runs
    except OSError as exc:
        raise StageError("seccomp", exc) from exc
    return argv0, env


def _report(fd: int, failure: StageFailed) -> None:
    try:
        write_frame(fd, encode(failure))
    except OSError:
        pass
