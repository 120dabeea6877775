"""What a job's cgroup is: the limits asked for, the statistics read back, and the two interfaces.

``JobCgroup`` holds the logic that is the same on v1 and v2 (joining, signalling every task
without racing forks or PID reuse); the version-specific files live in ``v1.py`` and ``v2.py``.
"""

from __future__ import annotations

import os
import re
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from capsa.errors import InvalidArgument, NotFound, Timeout

from ._files import wait_until

__all__ = ["CgroupDriver", "CgroupStats", "JobCgroup", "Limits", "validate_name"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def validate_name(name: str) -> str:
    """A job cgroup name is one path component, so a name can never reach outside the base directory."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"cgroup name {name!r} is invalid: use 1-128 characters from [A-Za-z0-9_.-], starting alphanumeric"
        )
    return name


@dataclass(frozen=True)
class Limits:
    """Resource limits for one job; ``None`` leaves a resource unlimited."""

    cpu_percent: int | None = None  # 100 = one full core
    cpuset: str | None = None  # "0-1" or "0,2"
    memory_bytes: int | None = None  # hard limit, swap disabled for the job
    pids_max: int | None = None
    io_bps: int | None = None  # read and write bytes/s each, on the disk backing io_path
    io_path: Path | None = None


@dataclass(frozen=True)
class CgroupStats:
    """Counters read from the job's cgroup; ``None`` means this host does not report that counter."""

    cpu_usage_ns: int | None
    cpu_nr_periods: int | None
    cpu_nr_throttled: int | None
    cpu_throttled_ns: int | None
    memory_current: int | None
    memory_peak: int | None
    oom_kills: int | None
    pids_current: int | None
    pids_denied: int | None  # forks refused because pids.max was reached (pids.events "max")
    io_read_bytes: int | None
    io_write_bytes: int | None


class JobCgroup(ABC):
    """One job's cgroup (one directory on v2, one per controller hierarchy on v1)."""

    version: int

    def __init__(self, name: str, procs_files: Iterable[Path]) -> None:
        self.name = name
        self._set_procs_files(procs_files)

    def _set_procs_files(self, files: Iterable[Path]) -> None:
        self._procs_paths = tuple(files)
        # Encoded once so join_self, which runs between fork and exec, does no conversions.
        self._procs_bytes = tuple(os.fsencode(p) for p in self._procs_paths)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} v{self.version} {self.name!r}>"

    def procs_files(self) -> list[Path]:
        """The files a forked child writes ``0`` into to enter this cgroup (all of them, in order)."""
        return list(self._procs_paths)

    def join_files(self) -> list[Path]:
        """The files a single-threaded child writes ``0`` into to join (see V1JobCgroup's override)."""
        return self.procs_files()

    def join_self(self) -> None:
        """Move the calling process into this cgroup.

        Meant for a freshly forked child before exec, so it only calls os.open/os.write/os.close.
        """
        flags = os.O_WRONLY | os.O_CLOEXEC
        for path in self._procs_bytes:
            fd = os.open(path, flags)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

    def add_pid(self, pid: int) -> None:
        """Move an existing process (not its existing children) into this cgroup."""
        data = str(int(pid)).encode()
        for path in self._procs_bytes:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise NotFound(f"cgroup {self.name!r} no longer exists ({os.fsdecode(path)})") from None
            try:
                os.write(fd, data)
            except ProcessLookupError:
                raise NotFound(f"cannot add pid {pid} to cgroup {self.name!r}: no such process") from None
            finally:
                os.close(fd)

    @abstractmethod
    def pids(self) -> list[int]:
        """Every process in the job's cgroup, including nested cgroups the job made."""

    @abstractmethod
    def is_empty(self) -> bool: ...

    @abstractmethod
    def freeze(self, timeout: float = 5.0) -> None: ...

    @abstractmethod
    def thaw(self) -> None: ...

    @abstractmethod
    def stats(self) -> CgroupStats: ...

    @abstractmethod
    def oom_killed(self) -> bool: ...

    @abstractmethod
    def remove(self, timeout: float = 5.0) -> None: ...

    @abstractmethod
    def device_rules(self, allow: list[str]) -> None: ...

    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def _can_freeze(self) -> bool: ...

    @abstractmethod
    def _lift_io_limits(self) -> None:
        """Remove the job's I/O throttle so bios already queued are dispatched at once."""

    @abstractmethod
    def _kill_native(self) -> bool:
        """Kill every task with one kernel operation; False when the kernel offers none."""

    def _try_freeze(self, budget: float) -> bool:
        """Freeze for at most ``budget`` seconds; tasks in uninterruptible sleep (throttled I/O) may delay it."""
        if not self._can_freeze():
            return False
        try:
            self.freeze(timeout=budget)
        except Timeout:
            return False
        return True

    def signal_all(self, sig: int) -> None:
        """Send ``sig`` once to every process, frozen first so none can fork away meanwhile."""
        frozen = self._try_freeze(0.5)
        try:
            _signal_pids(self.pids, sig)
        finally:
            if frozen or self._can_freeze():
                self.thaw()

    def kill_all(self, sig: int = signal.SIGKILL, timeout: float = 5.0) -> None:
        """Signal every process until the cgroup is empty; raise Timeout when it is not empty in time.

        v2 uses cgroup.kill for SIGKILL. Otherwise each round freezes the cgroup (so nothing can fork
        between reading the list and signalling it), signals every task, thaws and waits briefly;
        rounds repeat because without a freezer a task may fork while we signal.

        I/O throttling is lifted first: a task whose direct I/O sits in the throttle queue sleeps
        uninterruptibly, so neither SIGKILL nor the freezer reaches it until its bios are released.
        """
        deadline = time.monotonic() + timeout
        self._lift_io_limits()
        if sig == signal.SIGKILL and self._kill_native():
            if not wait_until(self.is_empty, deadline):
                raise Timeout(
                    f"cgroup {self.name!r}: processes remain {timeout}s after cgroup.kill: {self.pids()}"
                )
            return
        pause = 0.01
        while not self.is_empty():
            frozen = self._try_freeze(min(0.5, max(0.0, deadline - time.monotonic())))
            try:
                _signal_pids(self.pids, sig)
            finally:
                if frozen or self._can_freeze():
                    self.thaw()
            if wait_until(self.is_empty, min(deadline, time.monotonic() + pause)):
                return
            if time.monotonic() >= deadline:
                raise Timeout(
                    f"cgroup {self.name!r}: processes remain {timeout}s after signal {sig}: {self.pids()}"
                )
            pause = min(pause * 2, 0.2)


def _signal_pids(list_pids: Callable[[], list[int]], sig: int) -> None:
    """Signal the listed processes through pidfds, only those still listed after the pidfd was taken.

    A pid read from cgroup.procs may exit and be reused before we signal it; a pidfd pins the process,
    and seeing the pid listed again after taking the pidfd proves the pinned process is ours.
    """
    fds: dict[int, int] = {}
    try:
        for pid in list_pids():
            try:
                fds[pid] = os.pidfd_open(pid)
            except OSError:  # exited since it was listed
                continue
        still = set(list_pids())
        for pid, fd in fds.items():
            if pid in still:
                try:
                    signal.pidfd_send_signal(fd, sig)
                except ProcessLookupError:
                    pass
    finally:
        for fd in fds.values():
            os.close(fd)


class CgroupDriver(Protocol):
    """Creates and finds job cgroups under ``<own cgroup>/<prefix>/<name>``."""

    version: int
    prefix: str

    def create(self, name: str, limits: Limits) -> JobCgroup: ...

    def open(self, name: str) -> JobCgroup: ...

    def list(self) -> list[str]: ...

    def cleanup(self) -> None: ...
