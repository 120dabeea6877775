"""Fake cgroup trees in tmp_path that behave like cgroupfs where the drivers depend on it.

mkdir fills a new directory with the control files the kernel would create (for v2: the core files
plus those of the controllers the parent enabled in cgroup.subtree_control), rmdir refuses a cgroup
that still lists processes and otherwise removes the control files with the directory, and writing
to a file that does not exist fails (the drivers never create files), as on cgroupfs.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from capsa.runtime.cgroups import BlockResolver, V1Driver, V2Driver

V2_CORE = {
    "cgroup.procs": "",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cgroup.freeze": "0\n",
    "cgroup.kill": "",
    "cgroup.subtree_control": "",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
}
V2_CONTROLLER_FILES = {
    "cpu": {"cpu.max": "max 100000\n", "cpu.weight": "100\n"},
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": "", "cpuset.cpus.effective": "0-3\n"},
    "memory": {
        "memory.max": "max\n",
        "memory.swap.max": "max\n",
        "memory.current": "0\n",
        "memory.peak": "0\n",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    },
    "pids": {"pids.max": "max\n", "pids.current": "0\n", "pids.events": "max 0\n"},
    "io": {"io.max": "", "io.stat": ""},
}
V1_FILES = {
    "cpu": {"cpu.cfs_period_us": "100000\n", "cpu.cfs_quota_us": "-1\n", "cpu.stat": "nr_periods 0\n"},
    "cpuacct": {"cpuacct.usage": "0\n"},
    "memory": {
        "memory.limit_in_bytes": "9223372036854771712\n",
        "memory.memsw.limit_in_bytes": "9223372036854771712\n",
        "memory.swappiness": "60\n",
        "memory.usage_in_bytes": "0\n",
        "memory.max_usage_in_bytes": "0\n",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
    },
    "pids": {"pids.max": "max\n", "pids.current": "0\n", "pids.events": "max 0\n"},
    "blkio": {
        "blkio.throttle.read_bps_device": "",
        "blkio.throttle.write_bps_device": "",
        "blkio.throttle.io_service_bytes_recursive": "Total 0\n",
    },
    "freezer": {"freezer.state": "THAWED\n"},
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": ""},
    "devices": {"devices.allow": "", "devices.deny": "", "devices.list": "a *:* rwm\n"},
}


@dataclass
class FakeTree:
    """Kernel-like mkdir/rmdir for a directory tree; ``files_for`` says which files a new cgroup gets."""

    files_for: Callable[[Path], dict[str, str]]
    omit: set[str] = field(default_factory=set)
    made: list[Path] = field(default_factory=list)

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)
        self.made.append(path)
        files = {"cgroup.procs": "", **self.files_for(path)}
        for name, text in files.items():
            if name not in self.omit:
                (path / name).write_text(text)

    def rmdir(self, path: Path) -> None:
        if not path.is_dir():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        if any(p.is_dir() for p in path.iterdir()):
            raise OSError(errno.ENOTEMPTY, "Directory not empty", str(path))
        procs = path / "cgroup.procs"
        if procs.exists() and procs.read_text().split():
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        shutil.rmtree(path)


def _tokens(text: str) -> set[str]:
    return {t.lstrip("+") for t in text.split()}


@dataclass
class FakeV2:
    root: Path
    sysfs: Path
    tree: FakeTree

    def driver(self, prefix: str = "capsa", resolver: BlockResolver | None = None) -> V2Driver:
        return V2Driver(self.root, prefix=prefix, tree=self.tree, sysfs=self.sysfs, resolver=resolver)


@dataclass
class FakeV1:
    root: Path
    parents: dict[str, Path]
    sysfs: Path
    tree: FakeTree

    def driver(self, prefix: str = "capsa", resolver: BlockResolver | None = None) -> V1Driver:
        return V1Driver(self.parents, prefix=prefix, tree=self.tree, sysfs=self.sysfs, resolver=resolver)


@pytest.fixture
def fake_sysfs(tmp_path: Path) -> Path:
    """CPUs 0-3 online; block device 8:1 is partition sda1 of disk sda (8:0)."""
    sysfs = tmp_path / "sys"
    (sysfs / "devices/system/cpu").mkdir(parents=True)
    (sysfs / "devices/system/cpu/online").write_text("0-3\n")
    disk = sysfs / "devices/pci0000:00/block/sda"
    (disk / "sda1").mkdir(parents=True)
    (disk / "dev").write_text("8:0\n")
    (disk / "sda1/dev").write_text("8:1\n")
    (disk / "sda1/partition").write_text("1\n")
    (sysfs / "dev/block").mkdir(parents=True)
    (sysfs / "dev/block/8:0").symlink_to(disk)
    (sysfs / "dev/block/8:1").symlink_to(disk / "sda1")
    return sysfs


@pytest.fixture
def sda1_resolver(fake_sysfs: Path) -> BlockResolver:
    """Every path lives on /dev/sda1 (8:1) of the fake sysfs."""
    return BlockResolver(sysfs=fake_sysfs, dev_of=lambda p: (8, 1), mountinfo=lambda: "")


@pytest.fixture
def fake_v2(tmp_path: Path, fake_sysfs: Path) -> FakeV2:
    root = tmp_path / "cgroup2"
    root.mkdir()

    def files_for(path: Path) -> dict[str, str]:
        enabled = _tokens((path.parent / "cgroup.subtree_control").read_text())
        files = {**V2_CORE, "cgroup.controllers": " ".join(sorted(enabled)) + "\n"}
        for controller in enabled:
            files.update(V2_CONTROLLER_FILES.get(controller, {}))
        return files

    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "cgroup.procs").write_text("")
    return FakeV2(root, fake_sysfs, FakeTree(files_for))


@pytest.fixture
def fake_v1(tmp_path: Path, fake_sysfs: Path) -> FakeV1:
    """Hierarchies as on this host, but with cpu and cpuacct co-mounted and memory nested as here."""
    root = tmp_path / "cgroup"
    mounts = {
        "cpu,cpuacct": root / "cpu,cpuacct",
        "memory": root / "memory" / "process_api" / "abc",
        "pids": root / "pids",
        "blkio": root / "blkio",
        "freezer": root / "freezer",
        "cpuset": root / "cpuset",
        "devices": root / "devices",
    }
    for hierarchy, path in mounts.items():
        path.mkdir(parents=True)
        (path / "cgroup.procs").write_text("")
        if hierarchy == "cpuset":
            (path / "cpuset.cpus").write_text("0-3\n")
            (path / "cpuset.mems").write_text("0\n")
    parents = {c: p for h, p in mounts.items() for c in h.split(",")}

    def files_for(path: Path) -> dict[str, str]:
        hierarchy = path.relative_to(root).parts[0]
        files: dict[str, str] = {}
        for controller in hierarchy.split(","):
            files.update(V1_FILES[controller])
        return files

    return FakeV1(root, parents, fake_sysfs, FakeTree(files_for))
