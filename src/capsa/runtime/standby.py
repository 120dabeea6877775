"""Standbys: job processes cloned ahead of their jobs, so that a start skips the clone and the zygote.

A start through the zygote pays, on its critical path, a wake-up of the zygote, the clone of the
job's PID 1 (a copy of the zygote's page tables) and then one copy-on-write fault for every page
of the zygote's memory the job process writes before its execve (about 600, at about 3 us each in
this machine's VM). A standby is that process made beforehand: cloned by the zygote while the
supervisor is idle (``ZygoteStandby``), already in new PID, UTS and IPC namespaces (the mount
namespace comes with the order: :data:`STANDBY_CLONE_FLAGS`) and already the supervisor's child,
with the pages a job process writes already copied (:func:`own_pages`, one ``MADV_POPULATE_WRITE``
per range), blocked on a socket whose other end the supervisor holds. The supervisor sends a start
straight to it (the same ``ZygoteStart`` frame and descriptors the zygote would get) and the standby
goes on exactly as a freshly cloned job process (``zygote._job_process``).

Which pages to copy is learned once per zygote (:class:`StandbyShared`): the first start on a standby
records the pages it owns once in its root. Copying every private page instead (14 MB, 3,500 pages)
cost 12 ms of CPU per standby and made the job's execve free them all on the start path.

Nothing in a standby is specific to a job except the host-root template it inherited
(:mod:`capsa.runtime.hostroot`). The zygote rebuilds its template when the host changes; it writes
the build number in the memory it shares with its standbys, and a standby whose template is no
longer the current one assembles its root itself (``stage2.build_root`` without a template) instead
of showing a stale copy.

The supervisor asks for a standby only after ``STANDBY_IDLE_S`` without a start (see
``supervisor._standby``), so a burst of starts is served by the zygote as before and never waits
behind a standby being made.
"""

from __future__ import annotations

import contextlib
import errno
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

__all__ = ["STANDBY_CLONE_FLAGS", "STANDBY_IDLE_S", "JobRunner", "StandbyShared", "own_pages", "standby_main"]

STANDBY_IDLE_S = 0.02
# New PID, UTS and IPC namespaces at the clone; the mount namespace only with the order. A copy of the
# host's mount table made while idle would miss every mount made on the host since (a network
# namespace's bind mount, a volume, a capsule): unshare(CLONE_NEWNS) copies it as it is at the start.
STANDBY_CLONE_FLAGS = JOB_CLONE_FLAGS & ~linux.CLONE_NEWNS
_POPULATE_MAX = 32 << 20
_WORD = struct.Struct("q")
_SHARED_BYTES = 64 << 10
_MAX_RANGES = (_SHARED_BYTES - 16) // 16
_NOT_LEARNED, _LEARNING = 0, -1
_PM_MMAP_EXCLUSIVE = 1 << 56   # /proc/<pid>/pagemap: the page is mapped by this process only


class StandbyShared:
    """Memory the zygote shares with every standby it clones (MAP_SHARED | MAP_ANONYMOUS, made before them).

    It holds the build number of the zygote's host-root template (so a standby can tell its own copy
    is stale) and the pages a job process writes before its execve, learned once per zygote: the first
    start on a standby records which of its pages it had to copy (``/proc/self/pagemap``), and every
    later standby copies just those ahead of time (:func:`own_pages`). Copying all of them instead
    (14 MB) costs 12 ms of CPU per standby and makes the job's execve free 3,500 pages on the start
    path; the learned set is about 2.4 MB.
    """

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, _SHARED_BYTES)

    def publish_template(self, builds: int) -> None:
        """The zygote's template is build number ``builds`` (-1: none can be built)."""
        _WORD.pack_into(self._page, 0, builds)

    def template_build(self) -> int:
        return int(_WORD.unpack_from(self._page, 0)[0])

    def learned_pages(self) -> list[tuple[int, int]]:
        """The learned (address, length) ranges; empty until a start has recorded them."""
        count = int(_WORD.unpack_from(self._page, 8)[0])
        return [(int(_WORD.unpack_from(self._page, 16 + 16 * i)[0]), int(_WORD.unpack_from(self._page, 24 + 16 * i)[0]))
                for i in range(max(0, count))]

    def claim_learning(self) -> bool:
        """True for the one start that is to record the pages (only one standby exists at a time)."""
        if int(_WORD.unpack_from(self._page, 8)[0]) != _NOT_LEARNED:
            return False
        _WORD.pack_into(self._page, 8, _LEARNING)
        return True

    def record_pages(self, ranges: list[tuple[int, int]]) -> None:
        ranges = ranges[:_MAX_RANGES]
        for i, (address, length) in enumerate(ranges):
            _WORD.pack_into(self._page, 16 + 16 * i, address)
            _WORD.pack_into(self._page, 24 + 16 * i, length)
        _WORD.pack_into(self._page, 8, len(ranges) or _LEARNING)   # count last: readers see whole ranges


# The job process's code (zygote._job_process): order, descriptors, host-root template fd or -1, and a
# hook run once it is in its root, still root (None: nothing).
JobRunner = Callable[[ZygoteStart, list[int], int, Callable[[], None] | None], NoReturn]


def standby_main(link: socket.socket, run_job: JobRunner, template: int, template_build: int,
                 shared: StandbyShared) -> NoReturn:
    """The standby: own the pages a job writes, wait for one start order on ``link``, run it; exit at EOF.

    ``template``/``template_build``: the zygote's template when this standby was cloned (fd -1: none).
    """
    gc.disable()   # a collection would touch (and so copy) pages; the job path never collects either
    try:
        # Tied to the supervisor (our parent through CLONE_PARENT) while we wait; stage two sets it again
        # after the uid switch, which clears it.
        security.die_with_parent()
        own_pages(shared.learned_pages())
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
    if template >= 0 and (shared.template_build() != template_build or not template_applies(msg.spec)):
        with contextlib.suppress(OSError):
            os.close(template)
        template = -1
    learn = shared.claim_learning()
    run_job(msg, fds, template, (lambda: _learn_pages(shared)) if learn else None)


def _learn_pages(shared: StandbyShared) -> None:
    """Record which private pages this process owns now (those it copied since the clone, or allocated)."""
    with contextlib.suppress(OSError, ValueError):
        shared.record_pages(_exclusive_pages())


def _exclusive_pages() -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    page = mmap.PAGESIZE
    with open("/proc/self/maps", "rb") as fh:
        maps = fh.read().splitlines()
    pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for low, high in _private_writable(maps):
            entries = memoryview(os.pread(pagemap, (high - low) // page * 8, low // page * 8)).cast("Q")
            run_start = -1
            for i, entry in enumerate(entries):
                if entry & _PM_MMAP_EXCLUSIVE:
                    if run_start < 0:
                        run_start = i
                elif run_start >= 0:
                    ranges.append((low + run_start * page, (i - run_start) * page))
                    run_start = -1
            if run_start >= 0:
                ranges.append((low + run_start * page, (len(entries) - run_start) * page))
    finally:
        os.close(pagemap)
    return ranges


def _private_writable(maps: list[bytes]) -> list[tuple[int, int]]:
    """The (low, high) of the private writable mappings worth copying ahead (not the stack, not huge ones)."""
    found = []
    for line in maps:
        fields = line.split()
        if not fields[1].startswith(b"rw") or fields[1][3:4] != b"p":
            continue
        if len(fields) > 5 and fields[5].startswith(b"[") and fields[5] != b"[heap]":
            continue   # the stack is written anyway; [vvar] and such refuse the advice
        low, high = (int(x, 16) for x in fields[0].split(b"-"))
        if high - low <= _POPULATE_MAX:   # a large reservation may be mostly untouched
            found.append((low, high))
    return found


def own_pages(ranges: list[tuple[int, int]]) -> None:
    """Copy ``ranges`` of the memory shared with the zygote now, one call per range, not a fault per page later.

    A clone shares the zygote's memory copy-on-write; the job process's first write to each page (a
    reference count, an allocation) faults and copies it: about 600 pages, at about 3 us a fault on
    this machine's VM. ``MADV_POPULATE_WRITE`` does the copies ahead, off the start path. Kernels
    before 5.14 refuse the advice: the job then faults as a fresh clone would.
    """
    for address, length in ranges:
        try:
            linux.madvise(address, length, linux.MADV_POPULATE_WRITE)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return   # no such advice here
            # ENOMEM/EFAULT: the zygote's memory moved since this range was learned; skip it
