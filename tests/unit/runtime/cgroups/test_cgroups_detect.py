"""Locating the daemon's own cgroup per hierarchy from /proc/self/{mountinfo,cgroup} texts."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsa.errors import Unsupported
from capsa.runtime.cgroups import V1Driver, V2Driver, detect, layout_from

# This host: hybrid, cpu and cpuacct mounted separately, memory nested under the sandbox's path.
THIS_HOST_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
THIS_HOST_CGROUP = """\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/51e97e85c8eec3c96d36c0a09144b28d
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
"""

# A systemd hybrid host (Ubuntu 20.04 style): co-mounted cpu,cpuacct and net_cls,net_prio.
SYSTEMD_HYBRID_MOUNTINFO = """\
25 24 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:13 - cgroup cgroup rw,cpu,cpuacct
31 25 0:29 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid shared:14 - cgroup cgroup rw,net_cls,net_prio
32 25 0:30 / /sys/fs/cgroup/memory rw,nosuid shared:15 - cgroup cgroup rw,memory
33 25 0:31 / /sys/fs/cgroup/pids rw,nosuid shared:16 - cgroup cgroup rw,pids
"""
SYSTEMD_HYBRID_CGROUP = """\
12:pids:/system.slice/capsa.service
6:memory:/system.slice/capsa.service
4:net_cls,net_prio:/
3:cpu,cpuacct:/system.slice/capsa.service
1:name=systemd:/system.slice/capsa.service
0::/system.slice/capsa.service
"""

PURE_V2_MOUNTINFO = (
    "30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
)
PURE_V2_CGROUP = "0::/system.slice/capsa.service\n"


def test_this_hosts_layout_has_one_directory_per_controller_and_a_nested_memory_parent() -> None:
    layout = layout_from(THIS_HOST_MOUNTINFO, THIS_HOST_CGROUP)
    assert layout.v1["memory"] == Path("/sys/fs/cgroup/memory/process_api/51e97e85c8eec3c96d36c0a09144b28d")
    assert layout.v1["cpu"] == Path("/sys/fs/cgroup/cpu")
    assert layout.v1["cpuacct"] == Path("/sys/fs/cgroup/cpuacct")
    assert set(layout.v1) == {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids"}
    assert layout.v2 == Path("/sys/fs/cgroup/unified")


def test_comounted_controllers_share_a_directory() -> None:
    layout = layout_from(SYSTEMD_HYBRID_MOUNTINFO, SYSTEMD_HYBRID_CGROUP)
    service = Path("/sys/fs/cgroup/cpu,cpuacct/system.slice/capsa.service")
    assert layout.v1["cpu"] == layout.v1["cpuacct"] == service
    assert layout.v1["net_prio"] == Path("/sys/fs/cgroup/net_cls,net_prio")
    assert layout.v1["pids"] == Path("/sys/fs/cgroup/pids/system.slice/capsa.service")
    assert "name=systemd" not in layout.v1
    assert layout.v2 == Path("/sys/fs/cgroup/unified/system.slice/capsa.service")


def test_pure_v2_host_has_only_a_unified_directory() -> None:
    layout = layout_from(PURE_V2_MOUNTINFO, PURE_V2_CGROUP)
    assert layout.v1 == {}
    assert layout.v2 == Path("/sys/fs/cgroup/system.slice/capsa.service")


def test_cgroup_namespace_with_a_subtree_mount() -> None:
    mountinfo = "60 50 0:40 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    layout = layout_from(mountinfo, "0::/kubepods/pod1/daemon\n")
    assert layout.v2 == Path("/sys/fs/cgroup/daemon")


def _fake_proc(tmp_path: Path, mountinfo: str, cgroup: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self/mountinfo").write_text(mountinfo)
    (proc / "self/cgroup").write_text(cgroup)
    return proc


def test_detect_picks_v2_when_the_unified_tree_offers_controllers(tmp_path: Path) -> None:
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    proc = _fake_proc(tmp_path, f"30 24 0:26 / {root} rw - cgroup2 cgroup2 rw\n", "0::/\n")
    driver = detect(proc=proc, prefix="capsa")
    assert isinstance(driver, V2Driver) and driver.version == 2
    assert driver.base == root / "capsa"


def test_detect_picks_v1_on_a_hybrid_host_whose_unified_tree_has_no_resource_controllers(
    tmp_path: Path,
) -> None:
    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("hugetlb\n")
    mountinfo = THIS_HOST_MOUNTINFO.replace("/sys/fs/cgroup/unified", str(unified))
    driver = detect(proc=_fake_proc(tmp_path, mountinfo, THIS_HOST_CGROUP))
    assert isinstance(driver, V1Driver) and driver.version == 1
    assert driver.parents["memory"] == Path(
        "/sys/fs/cgroup/memory/process_api/51e97e85c8eec3c96d36c0a09144b28d"
    )


def test_detect_without_any_cgroup_mount_is_unsupported(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, "22 1 254:0 / / rw - ext4 /dev/vda rw\n", "0::/\n")
    with pytest.raises(Unsupported, match="no usable cgroup filesystem"):
        detect(proc=proc)
