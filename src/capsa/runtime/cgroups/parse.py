"""Pure decisions and parsers for cgroup files: no I/O here, so every branch is unit-tested on any host."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from capsa.errors import InvalidArgument

from .model import Limits

__all__ = [
    "CFS_PERIOD_US",
    "CgroupMount",
    "ProcCgroup",
    "blkio_throttle_line",
    "blkio_totals",
    "choose_version",
    "cpu_quota",
    "format_cpu_list",
    "io_max_line",
    "io_stat_totals",
    "parse_cpu_list",
    "parse_device_rule",
    "parse_flat_keyed",
    "parse_mountinfo",
    "parse_proc_cgroup",
    "resolve_cgroup_dir",
    "validate_cpuset",
    "validate_limits",
]

CFS_PERIOD_US = 100_000
_MIN_QUOTA_US = 1_000  # the kernel rejects cfs quotas below 1 ms

# Controllers a v1 mount may carry; anything else in the super options is a mount flag or name=.
V1_CONTROLLERS = frozenset(
    {
        "blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "hugetlb", "memory",
        "misc", "net_cls", "net_prio", "perf_event", "pids", "rdma",
    }
)  # fmt: skip


def cpu_quota(percent: int, *, period_us: int = CFS_PERIOD_US) -> tuple[int, int]:
    """``cpu_percent`` (100 = one core) -> (quota_us, period_us) for cpu.max / cpu.cfs_quota_us."""
    if isinstance(percent, bool) or not isinstance(percent, int) or percent <= 0:
        raise InvalidArgument(f"limit cpu_percent={percent!r} must be a positive integer (100 = one core)")
    quota = percent * period_us // 100
    return max(quota, _MIN_QUOTA_US), period_us


def parse_cpu_list(text: str) -> frozenset[int]:
    """Parse the kernel's CPU list format ("0-3,5,7-8"); an empty string is the empty set."""
    text = text.strip()
    if not text:
        return frozenset()
    cpus: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise InvalidArgument(f"cpu list {text!r}: {part!r} is not a CPU number or range like 0-3")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise InvalidArgument(f"cpu list {text!r}: range {part.strip()!r} is descending")
        cpus.update(range(lo, hi + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: frozenset[int] | set[int]) -> str:
    """The canonical kernel form: sorted, consecutive runs collapsed into ranges."""
    out: list[str] = []
    run: list[int] = []
    for cpu in sorted(cpus):
        if run and cpu == run[-1] + 1:
            run.append(cpu)
            continue
        if run:
            out.append(_run(run))
        run = [cpu]
    if run:
        out.append(_run(run))
    return ",".join(out)


def _run(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


def validate_cpuset(spec: str, online: frozenset[int]) -> str:
    """Check a cpuset request against the host's online CPUs; return it in canonical form."""
    cpus = parse_cpu_list(spec)
    if not cpus:
        raise InvalidArgument(f"limit cpuset={spec!r} names no CPU")
    missing = cpus - online
    if missing:
        raise InvalidArgument(
            f"limit cpuset={spec!r} names CPU {format_cpu_list(missing)} which is not online "
            f"(online: {format_cpu_list(online)})"
        )
    return format_cpu_list(cpus)


def validate_limits(limits: Limits, online: frozenset[int]) -> Limits:
    """Reject nonsensical limits before anything is created; returns the limits with cpuset canonical."""
    for field in ("memory_bytes", "pids_max", "io_bps"):
        value = getattr(limits, field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise InvalidArgument(f"limit {field}={value!r} must be a positive integer")
    if limits.memory_bytes is not None and limits.memory_bytes < 1 << 20:
        raise InvalidArgument(
            f"limit memory_bytes={limits.memory_bytes} is below 1 MiB; no process can start in it"
        )
    if limits.cpu_percent is not None:
        cpu_quota(limits.cpu_percent)
        ceiling = 100 * max(len(online), 1)
        if limits.cpu_percent > ceiling:
            raise InvalidArgument(
                f"limit cpu_percent={limits.cpu_percent} exceeds the {len(online)} online CPUs ({ceiling}%)"
            )
    if (limits.io_bps is None) != (limits.io_path is None):
        raise InvalidArgument(
            "limits io_bps and io_path go together: io_bps throttles the disk backing io_path"
        )
    cpuset = validate_cpuset(limits.cpuset, online) if limits.cpuset is not None else None
    if cpuset == limits.cpuset:
        return limits
    return Limits(
        cpu_percent=limits.cpu_percent,
        cpuset=cpuset,
        memory_bytes=limits.memory_bytes,
        pids_max=limits.pids_max,
        io_bps=limits.io_bps,
        io_path=limits.io_path,
    )


def parse_flat_keyed(text: str) -> dict[str, int]:
    """Parse "key value" lines (cpu.stat, memory.events, memory.oom_control, pids.events)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and re.fullmatch(r"-?\d+", parts[1]):
            out[parts[0]] = int(parts[1])
    return out


def io_stat_totals(text: str) -> tuple[int, int]:
    """Sum rbytes and wbytes over every device line of v2 io.stat ("8:0 rbytes=1 wbytes=2 ...")."""
    read = write = 0
    for line in text.splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if not value.isdigit():
                continue
            if key == "rbytes":
                read += int(value)
            elif key == "wbytes":
                write += int(value)
    return read, write


def blkio_totals(text: str) -> tuple[int, int]:
    """Sum Read and Write over every device of a v1 blkio rwstat file ("8:0 Read 4096")."""
    read = write = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or not parts[2].isdigit():
            continue
        if parts[1] == "Read":
            read += int(parts[2])
        elif parts[1] == "Write":
            write += int(parts[2])
    return read, write


def io_max_line(dev: tuple[int, int], bps: int) -> str:
    return f"{dev[0]}:{dev[1]} rbps={bps} wbps={bps}"


def blkio_throttle_line(dev: tuple[int, int], bps: int) -> str:
    return f"{dev[0]}:{dev[1]} {bps}"


_DEVICE_RULE = re.compile(r"([abc]) (\*|\d+):(\*|\d+) ([rwm]{1,3})")


def parse_device_rule(entry: str) -> str:
    """Validate a v1 devices.allow entry ("c 1:3 rwm", "b *:* m", or "a"); returns it normalised."""
    text = " ".join(entry.split())
    if text == "a":
        return text
    m = _DEVICE_RULE.fullmatch(text)
    if not m or len(set(m.group(4))) != len(m.group(4)):
        raise InvalidArgument(
            f"device rule {entry!r} is invalid: expected '<a|b|c> <major|*>:<minor|*> <rwm>' like 'c 1:3 rwm'"
        )
    return text


@dataclass(frozen=True)
class ProcCgroup:
    """One line of /proc/<pid>/cgroup."""

    hierarchy_id: int
    controllers: frozenset[str]  # empty for the v2 line ("0::/path")
    path: str


def parse_proc_cgroup(text: str) -> list[ProcCgroup]:
    out: list[ProcCgroup] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        hid, ctrls, path = line.split(":", 2)
        out.append(ProcCgroup(int(hid), frozenset(c for c in ctrls.split(",") if c), path))
    return out


@dataclass(frozen=True)
class CgroupMount:
    """The parts of one /proc/self/mountinfo line that locate files on disk."""

    dev: tuple[int, int]
    root: str  # the path inside the filesystem that is mounted
    mountpoint: str
    fstype: str
    source: str
    super_options: tuple[str, ...]

    @property
    def v1_controllers(self) -> frozenset[str]:
        return frozenset(o for o in self.super_options if o in V1_CONTROLLERS)

    def option(self, key: str) -> str | None:
        prefix = key + "="
        for opt in self.super_options:
            if opt.startswith(prefix):
                return opt[len(prefix) :]
        return None


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """Parse every mount of /proc/<pid>/mountinfo (order kept: later lines are mounted on top)."""
    out: list[CgroupMount] = []
    for line in text.splitlines():
        fields = line.split(" ")
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        major, _, minor = fields[2].partition(":")
        out.append(
            CgroupMount(
                dev=(int(major), int(minor)),
                root=_unescape(fields[3]),
                mountpoint=_unescape(fields[4]),
                fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]),
                super_options=tuple(fields[sep + 3].split(",")) if len(fields) > sep + 3 else (),
            )
        )
    return out


def resolve_cgroup_dir(mounts: list[CgroupMount], cgroup_path: str) -> Path | None:
    """The directory where ``cgroup_path`` (from /proc/self/cgroup) appears under one of ``mounts``.

    A mount may expose only a subtree of the hierarchy (its root); pick a mount whose root contains the path.
    """
    target = PurePosixPath(cgroup_path)
    for mount in mounts:
        root = PurePosixPath(mount.root)
        if target == root or root in target.parents:
            return Path(mount.mountpoint, *target.relative_to(root).parts)
    return None


def choose_version(v2_controllers: frozenset[str] | None, v1_controllers: frozenset[str]) -> int:
    """Pick the cgroup version to drive.

    ``v2_controllers`` is what cgroup.controllers offers at our own v2 cgroup (None: no cgroup2 mount);
    ``v1_controllers`` is what v1 hierarchies hold. A controller lives in exactly one of them, so v2 wins
    when it offers any resource controller, or when no v1 hierarchy exists at all (a pure v2 host that
    delegated nothing still gets kill/freeze); otherwise the host is v1 or hybrid.
    """
    resources = frozenset({"cpu", "memory", "pids", "io", "cpuset"})
    if v2_controllers is not None and v2_controllers & resources:
        return 2
    if v1_controllers & frozenset({"cpu", "cpuacct", "memory", "pids", "freezer", "blkio", "cpuset"}):
        return 1
    if v2_controllers is not None:
        return 2
    return 0
