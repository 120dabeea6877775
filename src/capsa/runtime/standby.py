"""Standbys: job processes cloned ahead of their jobs, so that a start skips the clone and the zygote.

A start through the zygote pays, on its critical path, a wake-up of the zygote, the clone of the
job's PID 1 (a copy of the zygote's page tables) and then one copy-on-write fault for every page
of the zygote's memory the job process writes before its execve (about 400 at 3 us each in this
machine's VM). A standby is that process made beforehand: cloned by the zygote while the supervisor
is idle (``ZygoteStandby``), already in new PID, UTS and IPC namespaces (the mount namespace comes
with the order: :data:`STANDBY_CLONE_FLAGS`) and already the supervisor's child, with every page it shares with the zygote made its own in one
``MADV_POPULATE_WRITE`` call (:func:`own_every_page`), blocked on a socket whose other end the
supervisor holds. The supervisor sends a start straight to it (the same ``ZygoteStart`` frame and
descriptors the zygote would get) and the standby goes on exactly as a freshly cloned job process
(``zygote._job_process``): it waits for the go, joins the job's cgroups, builds the root and execs.

Nothing in a standby is specific to a job except the host-root template it inherited
(:mod:`capsa.runtime.hostroot`). The zygote rebuilds its template when the host changes; it counts
its builds in a page it shares with its standbys (:class:`TemplateGeneration`), and a standby whose
template is no longer the current one assembles its root itself (``stage2.build_root`` without a
template) instead of showing a stale copy.

Costs, measured on the 2-core test machine: about 12 ms of CPU and 14 MB of memory per standby,
spent while idle and given back at the job's execve. The supervisor asks for one only after
``STANDBY_IDLE_S`` without a start (see ``supervisor._standby``), so a burst of starts is served by
the zygote as before and never waits behind a standby being made.
"""

from __future__ import annotations

import contextlib
import gc
import mmap
import os
import socket
import struct
from collections.abc import Callable
from typing import NoReturn

from capsa import linux
from capsa.runtime import security
from capsa.runtime._clone import JOB_CLONE_FLAGS
from capsa.runtime.hostroot import template_applies
from capsa.runtime.protocol import StageFailed, StandbyReady, ZygoteStart, decode, encode
from capsa.runtime.wire import recv_msg, send_msg, write_frame

__all__ = ["STANDBY_CLONE_FLAGS", "STANDBY_IDLE_S", "TemplateGeneration", "own_every_page", "standby_main"]

STANDBY_IDLE_S = 0.02
# New PID, UTS and IPC namespaces at the clone; the mount namespace only with the order. A copy of the
# host's mount table made while idle would miss every mount made on the host since (a network
# namespace's bind mount, a volume, a capsule): unshare(CLONE_NEWNS) copies it as it is at the start.
STANDBY_CLONE_FLAGS = JOB_CLONE_FLAGS & ~linux.CLONE_NEWNS
_POPULATE_MAX = 32 << 20
_COUNTER = struct.Struct("q")


class TemplateGeneration:
    """A counter in a page shared by the zygote and every standby it clones (MAP_SHARED | MAP_ANONYMOUS)."""

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, mmap.PAGESIZE)

    def publish(self, builds: int) -> None:
        """The zygote's template is build number ``builds`` (-1: none can be built)."""
        _COUNTER.pack_into(self._page, 0, builds)

    def current(self) -> int:
        return int(_COUNTER.unpack_from(self._page, 0)[0])


# The job process's code (zygote._job_process): order, descriptors, host-root template fd or -1.
JobRunner = Callable[[ZygoteStart, list[int], int], NoReturn]


def standby_main(link: socket.socket, run_job: JobRunner, template: int, template_build: int,
                 generation: TemplateGeneration) -> NoReturn:
    """The standby: own its pages, wait for one start order on ``link``, run it; exit at EOF.

    ``template``/``template_build``: the zygote's template when this standby was cloned (fd -1: none).
    """
    gc.disable()   # a collection would touch (and so copy) pages; the job path never collects either
    try:
        # Tied to the supervisor (our parent through CLONE_PARENT) while we wait; stage two sets it again
        # after the uid switch, which clears it.
        security.die_with_parent()
        own_every_page()
        # Our PID as the supervisor sees it (getpid() is 1 in here); /proc is still the host's.
        send_msg(link, encode(StandbyReady(int(os.readlink("/proc/self")))))
        frame, fds = recv_msg(link)
    except BaseException:
        frame, fds = None, []
    if frame is None:   # the supervisor let us go (shutdown, or it no longer wants standbys)
        os._exit(0)
    link.close()
    try:
        _id, msg = decode(frame)
        if not isinstance(msg, ZygoteStart) or len(fds) not in (4, 5):
            raise TypeError(f"a standby runs one job start, not {type(msg).__name__} with {len(fds)} fds")
    except Exception:
        # Never run what we cannot read; closing the report pipe makes the supervisor fail the start.
        os._exit(127)
    try:
        linux.unshare(linux.CLONE_NEWNS)
    except OSError as exc:
        with contextlib.suppress(OSError):
            write_frame(fds[-1], encode(StageFailed("mount namespace", exc.errno or 0, str(exc))))
        os._exit(127)
    if template >= 0 and (generation.current() != template_build or not template_applies(msg.spec)):
        with contextlib.suppress(OSError):
            os.close(template)
        template = -1
    run_job(msg, fds, template)


def own_every_page() -> None:
    """Copy every page shared with the zygote now, in one call per mapping, rather than one fault at a time later.

    A clone shares the zygote's memory copy-on-write; the job process's first write to each page (a
    reference count, an allocation) faults and copies it. ``MADV_POPULATE_WRITE`` over the private
    writable mappings (the interpreter's heap and arenas, the libraries' data) does them all, off the
    start path. Kernels before 5.14 refuse the advice: the job then faults as a fresh clone would.
    """
    with open("/proc/self/maps", "rb") as fh:
        maps = fh.read().splitlines()
    for line in maps:
        fields = line.split()
        if not fields[1].startswith(b"rw") or fields[1][3:4] != b"p":
            continue
        if len(fields) > 5 and fields[5].startswith(b"[") and fields[5] != b"[heap]":
            continue   # the stack is written anyway; [vvar] and such refuse the advice
        low, high = (int(x, 16) for x in fields[0].split(b"-"))
        if high - low > _POPULATE_MAX:
            continue   # a large reservation may be mostly untouched: populating would allocate all of it
        try:
            linux.madvise(low, high - low, linux.MADV_POPULATE_WRITE)
        except OSError:
            return
