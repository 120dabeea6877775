"""One raw ``clone(2)`` for the zygote: the job's PID 1 in new namespaces, as the supervisor's child.

``os.fork`` cannot do what a job start needs in one step: a new PID namespace applies to the
caller's *children* only, and a fork of the zygote would be the zygote's child, so the job had
to be forked twice (the zygote's child unshared, forked the job and exited, so that the job was
re-parented to the subreaping supervisor). ``clone(CLONE_PARENT | CLONE_NEW*)`` makes the job's
PID 1 directly, in its namespaces, with the supervisor as its parent: one process creation
instead of two (measured on the 2-core test machine: 0.5 ms to the child's first instruction,
against 1.1 ms for one ``os.fork`` of the same zygote; see docs/BENCHMARKS.md).

The child continues in Python without ``os.fork``'s after-fork hooks. That is safe here because
the zygote is single-threaded (no lock can be held by another thread; the GIL is released during
the foreign call) and the child only runs a straight line of syscalls before ``execve``. One
glibc detail stays stale in the child: the thread id cached in its thread descriptor (used by
``raise``/``abort``/``pthread_kill``), which the child never calls.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal

from capsa import linux

__all__ = ["JOB_CLONE_FLAGS", "clone_job"]

CLONE_PARENT = 0x00008000
# The cgroup namespace is not among them: the child unshares it after joining the job's cgroups,
# so its cgroup root is the job's cgroup.
JOB_CLONE_FLAGS = linux.CLONE_NEWNS | linux.CLONE_NEWPID | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC
_NR_CLONE = {"x86_64": 56, "aarch64": 220}.get(platform.machine())

_libc = ctypes.CDLL(None, use_errno=True)
# clone's argument order differs by ABI (flags, stack, parent_tid, child_tid, tls on x86-64;
# flags, stack, parent_tid, tls, child_tid on arm64): with all pointers NULL it does not matter.
_syscall = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_void_p,
                            ctypes.c_void_p, ctypes.c_void_p, use_errno=True)(("syscall", _libc))


def clone_job(flags: int = JOB_CLONE_FLAGS) -> int:
    """0 in the child; the child's PID in the caller. The exit signal goes to the caller's parent."""
    if _NR_CLONE is None:
        raise OSError(38, f"clone: no syscall number known for {platform.machine()}")
    pid = _syscall(_NR_CLONE, flags | CLONE_PARENT | signal.SIGCHLD, None, None, None, None)
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"clone: {os.strerror(err)}")
    return int(pid)
