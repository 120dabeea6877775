"""Seccomp filters as bytes: install one on the calling process, or get every profile compiled by a child.

Kept apart from :mod:`capsa.runtime.security.seccomp`, which loads libseccomp (through pyseccomp,
≈ 4.6 MB and 60 modules): the zygote holds only the compiled programs, because every module and
page it holds is address space that each job's ``execve`` tears down on the start path (ADR-0018).
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import json
import os
from collections.abc import Sequence

from capsa.errors import InvalidArgument
from capsa.runtime.security import _kernel

__all__ = ["BPF_MAXINSNS", "PROFILE_NAMES", "UNCONFINED", "compile_apart", "install_bpf", "prepare"]

UNCONFINED = "unconfined"
PROFILE_NAMES = ("default", "strict", UNCONFINED)
BPF_MAXINSNS = 4096   # the kernel's limit on one program


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


# bytes -> (program buffer, sock_fprog): built where the profile is compiled, so a forked job
# only makes the prctl call. Keyed by the bytes themselves; their hash is cached on the object.
_PREPARED: dict[bytes, tuple[ctypes.Array[ctypes.c_char], _SockFprog]] = {}


def prepare(bpf: bytes) -> _SockFprog:
    """The ``struct sock_fprog`` for ``bpf``, made once per program (before forking jobs)."""
    entry = _PREPARED.get(bpf)
    if entry is None:
        program = ctypes.create_string_buffer(bpf, len(bpf))
        entry = (program, _SockFprog(len(bpf) // 8, ctypes.addressof(program)))
        _PREPARED[bpf] = entry
    return entry[1]


def install_bpf(bpf: bytes) -> None:
    """Install a compiled filter on the calling thread (and its future children).

    Sets ``no_new_privs`` first (the kernel refuses a filter from a process without
    ``CAP_SYS_ADMIN`` otherwise). Must be the last step before ``execve``: from here on
    every syscall of this process is filtered. ``b""`` installs nothing.
    """
    if not bpf:
        return
    if len(bpf) % 8 or len(bpf) // 8 > BPF_MAXINSNS:
        raise OSError(errno_mod.EINVAL, f"install_bpf: not a BPF program ({len(bpf)} bytes)")
    fprog = prepare(bpf)
    _kernel.prctl(_kernel.PR_SET_NO_NEW_PRIVS, 1)
    _kernel.prctl(_kernel.PR_SET_SECCOMP, _kernel.SECCOMP_MODE_FILTER, ctypes.addressof(fprog))


def compile_apart(names: Sequence[str]) -> dict[str, bytes]:
    """Each profile's program, compiled in a forked child so libseccomp never loads here.

    Call it while the process has no other threads and its children are still its to wait for
    (the zygote: before it ignores SIGCHLD). Raises InvalidArgument with the child's error.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # pragma: no cover - the child's coverage is not collected
        status = 1
        try:
            os.close(r)
            from capsa.runtime.security.seccomp import compile_profile

            payload = {"programs": {name: compile_profile(name).hex() for name in names}}
        except BaseException as exc:   # noqa: BLE001 - everything goes back to the parent as text
            payload = {"error": f"{type(exc).__name__}: {exc}"}
        try:
            with os.fdopen(w, "w") as out:
                out.write(json.dumps(payload))
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    with os.fdopen(r) as answer:
        text = answer.read()
    _, status = os.waitpid(pid, 0)
    try:
        reply = json.loads(text)
    except ValueError:
        reply = {"error": f"the compiling process ended with status {status} and no answer"}
    if "error" in reply or os.waitstatus_to_exitcode(status) != 0:
        raise InvalidArgument(f"compiling the seccomp profiles failed: {reply.get('error', status)}")
    programs = {name: bytes.fromhex(program) for name, program in reply["programs"].items()}
    for name in names:
        bpf = programs[name]
        if bpf:
            prepare(bpf)
    return programs
