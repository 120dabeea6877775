"""Which cgroup filesystems a job gets at /sys/fs/cgroup, and how they are mounted (read-only, its own root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from capsa.runtime.cgroups.jobview import _mount_options, _owning_mounts
from capsa.runtime.cgroups.parse import parse_mountinfo

HYBRID = """\
31 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
34 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpu,cpuacct
35 31 0:30 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
36 31 0:31 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,pids
37 31 0:32 / /sys/fs/cgroup/devices rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,devices
38 31 0:33 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpuset
"""
PURE_V2 = "30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"


def owning(mountinfo: str, dirs: list[str]) -> list[str]:
    return [m.mountpoint for m in _owning_mounts(parse_mountinfo(mountinfo), dirs)]


def test_only_hierarchies_holding_a_job_cgroup_are_chosen() -> None:
    dirs = ["/sys/fs/cgroup/cpu,cpuacct/capsa/j", "/sys/fs/cgroup/memory/daemon/capsa/j",
            "/sys/fs/cgroup/pids/capsa/j", "/sys/fs/cgroup/devices/capsa/j"]
    assert owning(HYBRID, dirs) == ["/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/memory",
                                    "/sys/fs/cgroup/pids", "/sys/fs/cgroup/devices"]
    # systemd, unified and cpuset hold no cgroup of the job: mounting them would show the daemon's subtree


def test_a_pure_v2_host_has_one_mount_for_the_job() -> None:
    assert owning(PURE_V2, ["/sys/fs/cgroup/system.slice/capsa.service/capsa/j"]) == ["/sys/fs/cgroup"]


def test_a_path_only_sharing_a_prefix_is_not_inside_a_mount() -> None:
    assert owning(HYBRID, ["/sys/fs/cgroup/memoryx/capsa/j"]) == []


def test_mount_options_name_the_controllers_only() -> None:
    mounts = {m.mountpoint: m for m in parse_mountinfo(HYBRID)}
    assert _mount_options(mounts["/sys/fs/cgroup/cpu,cpuacct"]) == "cpu,cpuacct"
    assert _mount_options(mounts["/sys/fs/cgroup/systemd"]) == "name=systemd"   # xattr is not passed on
    assert _mount_options(mounts["/sys/fs/cgroup/unified"]) is None


MOUNT_IN_NAMESPACE = r"""
import json, os, sys
from capsa import linux
from capsa.runtime.cgroups import Limits, detect
from capsa.runtime.cgroups.jobview import mount_job_cgroups
root = sys.argv[1]
driver = detect()
cg = driver.create("jobview-" + str(os.getpid()), Limits(pids_max=7))
try:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        cg.join_self()
        linux.unshare(linux.CLONE_NEWNS | linux.CLONE_NEWCGROUP)
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE, None)
        linux.mount("sysfs", root + "/sys", "sysfs", linux.MS_RDONLY, None)
        names = mount_job_cgroups(root, [os.path.dirname(str(p)) for p in cg.join_files()])
        base = root + "/sys/fs/cgroup/" + ("" if names == ["."] else "pids/")
        try:
            open(base + "pids.max", "w").write("max")
            wrote = "written"
        except OSError as exc:
            wrote = exc.errno
        os.write(w, json.dumps({"names": names, "max": open(base + "pids.max").read().strip(),
                                "write": wrote}).encode())
        os._exit(0)
    os.close(w)
    print(os.read(r, 4096).decode())
    os.waitpid(pid, 0)
finally:
    cg.remove()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and cgroups need root")
def test_the_job_sees_its_own_limits_read_only(tmp_path: Path) -> None:
    (tmp_path / "sys").mkdir()
    done = subprocess.run([sys.executable, "-c", MOUNT_IN_NAMESPACE, str(tmp_path)], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["max"] == "7" and seen["write"] == 30   # its own pids.max, EROFS on writing it
    assert "pids" in seen["names"] or seen["names"] == ["."]
