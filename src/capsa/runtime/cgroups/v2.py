"""cgroup v2 (unified hierarchy): one directory per job, limits in cpu.max / memory.max / pids.max / io.max."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from capsa.errors import AlreadyExists, CapsaError, FailedPrecondition, NotFound, Timeout, Unsupported

from ._files import (
    KernelTree,
    TreeOps,
    make_dir,
    procs_recursive,
    read_int,
    read_text,
    remove_tree,
    try_read,
    wait_until,
)
from ._files import write_file as _write
from .blockdev import BlockResolver
from .devices_v2 import attach_device_program
from .model import CgroupStats, JobCgroup, Limits, validate_name
from .parse import cpu_quota, io_max_line, io_stat_totals, parse_cpu_list, parse_flat_keyed, validate_limits

__all__ = ["V2Driver", "V2JobCgroup"]

# The resource controllers capsa turns on for its subtree when the parent offers them.
_WANTED = frozenset({"cpu", "cpuset", "io", "memory", "pids"})
_LIMIT_CONTROLLER = {
    "cpu_percent": "cpu",
    "cpuset": "cpuset",
    "memory_bytes": "memory",
    "pids_max": "pids",
    "io_bps": "io",
}


def _tokens(text: str) -> frozenset[str]:
    return frozenset(t.lstrip("+") for t in text.split())


class V2Driver:
    """Job cgroups at ``<parent>/<prefix>/<name>``; ``parent`` is the daemon's own cgroup directory.

    ``tree`` and ``sysfs`` exist so that a fake tree in a temporary directory can stand in for the kernel.
    """

    version = 2

    def __init__(
        self,
        parent: Path,
        *,
        prefix: str = "capsa",
        tree: TreeOps | None = None,
        sysfs: Path = Path("/sys"),
        resolver: BlockResolver | None = None,
    ) -> None:
        self.parent = Path(parent)
        self.prefix = validate_name(prefix)
        self.base = self.parent / self.prefix
        self._tree = tree or KernelTree()
        self._sysfs = sysfs
        self._resolver = resolver or BlockResolver(sysfs=sysfs)
        self._enabled: frozenset[str] | None = None

    def __repr__(self) -> str:
        return f"<V2Driver base={self.base}>"

    def _online(self) -> frozenset[int]:
        return parse_cpu_list(read_text(self._sysfs / "devices/system/cpu/online"))

    def enabled_controllers(self) -> frozenset[str]:
        """Controllers a job cgroup gets; enables them in the parent and base on first use."""
        if self._enabled is None:
            self._enabled = self._ensure_base()
        return self._enabled

    def _ensure_base(self) -> frozenset[str]:
        available = _tokens(read_text(self.parent / "cgroup.controllers"))
        wanted = available & _WANTED
        missing = wanted - _tokens(read_text(self.parent / "cgroup.subtree_control"))
        if missing:
            self._enable(self.parent, missing)
        try:
            make_dir(self._tree, self.base)
        except FileExistsError:
            pass
        missing = wanted - _tokens(read_text(self.base / "cgroup.subtree_control"))
        if missing:
            self._enable(self.base, missing)
        return _tokens(read_text(self.base / "cgroup.subtree_control"))

    def _enable(self, directory: Path, controllers: frozenset[str]) -> None:
        value = " ".join(f"+{c}" for c in sorted(controllers))
        try:
            _write(directory / "cgroup.subtree_control", value, what=f"enabling controllers {value}")
        except FailedPrecondition as exc:
            # EBUSY here is the "no internal processes" rule: a non-root cgroup holding processes
            # (the daemon itself) cannot hand controllers to children.
            raise FailedPrecondition(
                f"cgroup v2: cannot enable {value} in {directory}/cgroup.subtree_control ({exc}); run capsa in "
                "a delegated cgroup whose processes sit in a leaf (e.g. systemd Delegate=yes)"
            ) from None

    def create(self, name: str, limits: Limits) -> V2JobCgroup:
        name = validate_name(name)
        limits = validate_limits(limits, self._online())
        devices = self._resolver.for_path(limits.io_path) if limits.io_path is not None else ()
        enabled = self.enabled_controllers()
        for field, controller in _LIMIT_CONTROLLER.items():
            if getattr(limits, field) is not None and controller not in enabled:
                raise Unsupported(
                    f"limit {field}: the cgroup v2 '{controller}' controller is not available under "
                    f"{self.parent} (cgroup.controllers offers: {' '.join(sorted(enabled)) or 'none'})"
                )
        path = self.base / name
        try:
            make_dir(self._tree, path)
        except FileExistsError:
            raise AlreadyExists(f"cgroup {name!r} already exists at {path}") from None
        except FileNotFoundError:
            # The base went away under us (another process's cleanup()): make it again.
            self._enabled = self._ensure_base()
            make_dir(self._tree, path)
        try:
            _apply(path, limits, devices)
        except BaseException:
            try:
                remove_tree(self._tree, path, time.monotonic() + 1.0)
            except CapsaError:
                pass
            raise
        return V2JobCgroup(name, path, self._tree)

    def open(self, name: str) -> V2JobCgroup:
        path = self.base / validate_name(name)
        if not path.is_dir():
            raise NotFound(f"cgroup {name!r} does not exist at {path}")
        return V2JobCgroup(name, path, self._tree)

    def list(self) -> list[str]:
        try:
            with os.scandir(self.base) as it:
                return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []

    def cleanup(self) -> None:
        """Remove the base directory when no job cgroup is left in it."""
        try:
            self._tree.rmdir(self.base)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EBUSY):
                raise
        self._enabled = None


def _apply(path: Path, limits: Limits, devices: tuple[tuple[int, int], ...]) -> None:
    if limits.cpu_percent is not None:
        quota, period = cpu_quota(limits.cpu_percent)
        _write(path / "cpu.max", f"{quota} {period}", what=f"limit cpu_percent={limits.cpu_percent}")
    if limits.cpuset is not None:
        # An empty cpuset.mems on v2 means "the parent's", so only the CPUs are written.
        _write(path / "cpuset.cpus", limits.cpuset, what=f"limit cpuset={limits.cpuset}")
    if limits.memory_bytes is not None:
        what = f"limit memory_bytes={limits.memory_bytes}"
        _write(path / "memory.max", str(limits.memory_bytes), what=what)
        if (path / "memory.swap.max").exists():  # absent when the kernel has no swap accounting
            _write(path / "memory.swap.max", "0", what=what + " (disabling swap)")
    if limits.pids_max is not None:
        _write(path / "pids.max", str(limits.pids_max), what=f"limit pids_max={limits.pids_max}")
    if limits.io_bps is not None:
        for dev in devices:
            _write(path / "io.max", io_max_line(dev, limits.io_bps), what=f"limit io_bps={limits.io_bps}")


class V2JobCgroup(JobCgroup):
    version = 2

    def __init__(self, name: str, path: Path, tree: TreeOps) -> None:
        super().__init__(name, [path / "cgroup.procs"])
        self.path = path
        self._tree = tree

    def exists(self) -> bool:
        return self.path.is_dir()

    def pids(self) -> list[int]:
        return procs_recursive(self.path)

    def is_empty(self) -> bool:
        events = try_read(self.path / "cgroup.events")
        if events is None:
            return True
        return parse_flat_keyed(events).get("populated", 0) == 0

    def _can_freeze(self) -> bool:
        return (self.path / "cgroup.freeze").exists()

    def freeze(self, timeout: float = 5.0) -> None:
        _write(self.path / "cgroup.freeze", "1", what=f"freezing cgroup {self.name!r}")
        if not wait_until(self._frozen, time.monotonic() + timeout):
            raise Timeout(f"cgroup {self.name!r} did not freeze within {timeout}s")

    def _frozen(self) -> bool:
        events = try_read(self.path / "cgroup.events")
        return events is None or parse_flat_keyed(events).get("frozen") == 1

    def thaw(self) -> None:
        if self.exists():
            _write(self.path / "cgroup.freeze", "0", what=f"thawing cgroup {self.name!r}")

    def _lift_io_limits(self) -> None:
        io_max = self.path / "io.max"
        for line in (try_read(io_max) or "").splitlines():
            dev = line.split()[0] if line.strip() else ""
            if ":" in dev:
                unlimited = f"{dev} rbps=max wbps=max riops=max wiops=max"
                _write(io_max, unlimited, what=f"lifting io.max of cgroup {self.name!r}")

    def _kill_native(self) -> bool:
        kill = self.path / "cgroup.kill"
        if not kill.exists():  # before Linux 5.14
            return False
        _write(kill, "1", what=f"killing cgroup {self.name!r}")
        return True

    def stats(self) -> CgroupStats:
        cpu = parse_flat_keyed(try_read(self.path / "cpu.stat") or "")
        events = try_read(self.path / "memory.events")
        io = try_read(self.path / "io.stat")
        read, written = io_stat_totals(io) if io is not None else (None, None)
        return CgroupStats(
            cpu_usage_ns=_ns(cpu.get("usage_usec")),
            cpu_nr_periods=cpu.get("nr_periods"),
            cpu_nr_throttled=cpu.get("nr_throttled"),
            cpu_throttled_ns=_ns(cpu.get("throttled_usec")),
            memory_current=read_int(self.path / "memory.current"),
            memory_peak=read_int(self.path / "memory.peak"),  # Linux 5.19+
            oom_kills=parse_flat_keyed(events).get("oom_kill", 0) if events is not None else None,
            pids_current=read_int(self.path / "pids.current"),
            pids_denied=_events_max(try_read(self.path / "pids.events")),
            io_read_bytes=read,
            io_write_bytes=written,
        )

    def oom_killed(self) -> bool:
        events = try_read(self.path / "memory.events")
        return events is not None and parse_flat_keyed(events).get("oom_kill", 0) > 0

    def remove(self, timeout: float = 5.0) -> None:
        if not self.exists():
            return
        if not self.is_empty():
            self.kill_all(timeout=timeout)
        remove_tree(self._tree, self.path, time.monotonic() + timeout)

    def device_rules(self, allow: list[str]) -> None:
        """Deny every device but ``allow`` ("c 1:3 rw", ...) with an eBPF program (see devices_v2)."""
        attach_device_program(self.path, allow)


def _events_max(text: str | None) -> int | None:
    return None if text is None else parse_flat_keyed(text).get("max", 0)


def _ns(usec: int | None) -> int | None:
    return None if usec is None else usec * 1000
