"""The job's own cgroup tree at ``/sys/fs/cgroup`` inside the job, read-only.

Stage two calls :func:`mount_job_cgroups` after the job's fresh read-only sysfs is mounted
(it carries no cgroup mounts of its own) and before ``pivot_root``. The job is already in
its cgroups and in a new cgroup namespace, so each cgroup filesystem mounted here has the
job's own cgroup as its root: the job reads its limits and counters (``memory.max``,
``pids.current``, ...) but sees no parent or sibling, and every mount is read-only,
``nosuid,nodev,noexec``. A job therefore has no writable cgroupfs at all: it can neither
raise its own limits nor move itself into another cgroup, and it lacks ``CAP_SYS_ADMIN``
(and the seccomp filter refuses ``mount``) to mount one of its own.

Only hierarchies that hold a cgroup of the job are mounted (the directories the
supervisor created, passed down by the zygote): a hierarchy where the job has no cgroup
of its own would show its parent's whole subtree, other jobs included.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

from capsa import linux

from .parse import CgroupMount, parse_mountinfo

__all__ = ["CGROUP_MOUNTPOINT", "host_cgroup_mounts", "mount_job_cgroups"]

CGROUP_MOUNTPOINT = "/sys/fs/cgroup"
_FLAGS = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
_RO = linux.MS_RDONLY | _FLAGS


@functools.cache
def host_cgroup_mounts() -> tuple[CgroupMount, ...]:
    """The host's cgroup mounts, read once (about 1 ms): the zygote calls this before forking any
    job, so every stage two inherits the answer instead of parsing /proc/self/mountinfo again."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        return tuple(m for m in parse_mountinfo(fh.read()) if m.fstype in ("cgroup", "cgroup2"))


def _owning_mounts(mounts: Sequence[CgroupMount], job_dirs: Sequence[str]) -> list[CgroupMount]:
    """For each job directory, the cgroup mount it lives under (the deepest matching mount point)."""
    cgroup_mounts = [m for m in mounts if m.fstype in ("cgroup", "cgroup2")]
    chosen: dict[str, CgroupMount] = {}
    for directory in job_dirs:
        best = None
        for mount in cgroup_mounts:
            point = mount.mountpoint.rstrip("/") or "/"
            inside = directory == point or directory.startswith(point + "/")
            if inside and (best is None or len(point) > len(best.mountpoint)):
                best = mount
        if best is not None:
            chosen.setdefault(best.mountpoint, best)
    return list(chosen.values())


def _mount_options(mount: CgroupMount) -> str | None:
    if mount.fstype == "cgroup2":
        return None
    names = sorted(mount.v1_controllers)
    named = [o for o in mount.super_options if o.startswith("name=")]
    return ",".join(names + named) or None


def mount_job_cgroups(root: str, job_dirs: Sequence[str], *, mountinfo: str | None = None) -> list[str]:
    """Mount the job's cgroups read-only under ``root/sys/fs/cgroup``; returns the names mounted.

    ``job_dirs`` are host paths of the job's cgroup directories. On a pure cgroup v2 host the
    one cgroup2 mount goes straight to /sys/fs/cgroup; otherwise a small tmpfs there holds one
    directory per hierarchy (named as on the host: ``memory``, ``cpu,cpuacct`` plus symlinks
    for co-mounted controllers, ``unified``) and is made read-only afterwards.
    """
    base = root + CGROUP_MOUNTPOINT
    if not job_dirs or not os.path.isdir(base):
        return []
    mounts = host_cgroup_mounts() if mountinfo is None else tuple(parse_mountinfo(mountinfo))
    owning = _owning_mounts(mounts, job_dirs)
    if not owning:
        return []
    if len(owning) == 1 and owning[0].fstype == "cgroup2" and owning[0].mountpoint == CGROUP_MOUNTPOINT:
        linux.mount("cgroup2", base, "cgroup2", _RO, None)
        return ["."]
    linux.mount("tmpfs", base, "tmpfs", _FLAGS, "mode=0755,size=16k")
    names = []
    for mount in owning:
        point = mount.mountpoint
        name = point[len(CGROUP_MOUNTPOINT) + 1:] if point.startswith(CGROUP_MOUNTPOINT + "/") \
            else os.path.basename(point)
        target = f"{base}/{name}"
        os.makedirs(target, 0o755, exist_ok=True)
        linux.mount(mount.fstype, target, mount.fstype, _RO, _mount_options(mount))
        names.append(name)
        if "/" not in name:
            for controller in mount.v1_controllers - {name}:   # cpu -> cpu,cpuacct, as hosts do
                if not os.path.lexists(f"{base}/{controller}"):
                    os.symlink(name, f"{base}/{controller}")
    linux.mount(None, base, None, linux.MS_REMOUNT | _RO, "mode=0755,size=16k")
    return sorted(names)
