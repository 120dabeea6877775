"""Pick the cgroup driver for this host at start, rooted at the calling process's own cgroup."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from capsa.errors import Unsupported

from ._files import try_read
from .model import CgroupDriver
from .parse import (
    CgroupMount,
    ProcCgroup,
    choose_version,
    parse_mountinfo,
    parse_proc_cgroup,
    resolve_cgroup_dir,
)
from .v1 import V1Driver
from .v2 import V2Driver

__all__ = ["Layout", "detect", "host_layout", "layout_from"]


@dataclass(frozen=True)
class Layout:
    """Where this process sits in each cgroup hierarchy."""

    v1: dict[str, Path]  # controller -> own directory in the v1 hierarchy that holds it
    v2: Path | None  # own directory in the unified hierarchy, if one is mounted


def layout_from(mountinfo: str, proc_cgroup: str) -> Layout:
    """Combine /proc/self/mountinfo and /proc/self/cgroup (pure: both are passed as text)."""
    mounts = parse_mountinfo(mountinfo)
    own = parse_proc_cgroup(proc_cgroup)
    v1: dict[str, Path] = {}
    v1_mounts = [m for m in mounts if m.fstype == "cgroup" and m.v1_controllers]
    for line in own:
        if not line.controllers:
            continue
        wanted = line.controllers - {c for c in line.controllers if c.startswith("name=")}
        if not wanted:
            continue
        matching = [m for m in v1_mounts if m.v1_controllers == wanted]
        directory = resolve_cgroup_dir(matching, line.path)
        if directory is not None:
            for controller in wanted:
                v1.setdefault(controller, directory)
    return Layout(v1, _v2_dir([m for m in mounts if m.fstype == "cgroup2"], own))


def _v2_dir(mounts: list[CgroupMount], own: list[ProcCgroup]) -> Path | None:
    line = next((x for x in own if x.hierarchy_id == 0), None)
    if line is None or not mounts:
        return None
    return resolve_cgroup_dir(mounts, line.path)


def host_layout(proc: Path = Path("/proc")) -> Layout:
    return layout_from((proc / "self/mountinfo").read_text(), (proc / "self/cgroup").read_text())


def detect(*, prefix: str = "capsa", proc: Path = Path("/proc"), sysfs: Path = Path("/sys")) -> CgroupDriver:
    """v2 when the unified hierarchy offers resource controllers at our cgroup, else v1 (legacy/hybrid)."""
    layout = host_layout(proc)
    v2_controllers: frozenset[str] | None = None
    if layout.v2 is not None:
        text = try_read(layout.v2 / "cgroup.controllers")
        v2_controllers = frozenset(text.split()) if text is not None else None
    version = choose_version(v2_controllers, frozenset(layout.v1))
    if version == 2:
        assert layout.v2 is not None
        return V2Driver(layout.v2, prefix=prefix, sysfs=sysfs)
    if version == 1:
        return V1Driver(layout.v1, prefix=prefix, sysfs=sysfs)
    raise Unsupported(
        "no usable cgroup filesystem is mounted (neither cgroup2 nor v1 controller hierarchies)"
    )
