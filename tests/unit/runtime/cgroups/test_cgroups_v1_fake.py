"""The cgroup v1 driver against a fake tree: co-mounted hierarchies, nested parents, fallbacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsa.errors import AlreadyExists, InvalidArgument, NotFound, Unsupported
from capsa.runtime.cgroups import Limits, V1Driver, V1JobCgroup

ALL_LIMITS = Limits(
    cpu_percent=150, cpuset="3", memory_bytes=64 << 20, pids_max=32, io_bps=2 << 20, io_path=Path("/data")
)


def test_create_makes_one_directory_per_hierarchy_under_each_own_cgroup(fake_v1) -> None:
    cg = fake_v1.driver().create("job1", Limits())
    root = fake_v1.root
    assert isinstance(cg, V1JobCgroup) and cg.version == 1
    assert cg.dirs["cpu"] == cg.dirs["cpuacct"] == root / "cpu,cpuacct/capsa/job1"
    assert cg.dirs["memory"] == root / "memory/process_api/abc/capsa/job1"
    assert set(cg.dirs) == {"cpu", "cpuacct", "memory", "pids", "blkio", "freezer"}  # no cpuset, no devices
    assert cg.procs_files() == [
        root / "cpu,cpuacct/capsa/job1/cgroup.procs",
        root / "memory/process_api/abc/capsa/job1/cgroup.procs",
        root / "pids/capsa/job1/cgroup.procs",
        root / "blkio/capsa/job1/cgroup.procs",
        root / "freezer/capsa/job1/cgroup.procs",
    ]


def test_every_limit_lands_in_its_v1_file(fake_v1, sda1_resolver) -> None:
    cg = fake_v1.driver(resolver=sda1_resolver).create("job1", ALL_LIMITS)
    d = cg.dirs
    assert (d["cpu"] / "cpu.cfs_period_us").read_text() == "100000"
    assert (d["cpu"] / "cpu.cfs_quota_us").read_text() == "150000"
    assert (d["memory"] / "memory.limit_in_bytes").read_text() == str(64 << 20)
    assert (d["memory"] / "memory.memsw.limit_in_bytes").read_text() == str(64 << 20)
    assert (d["pids"] / "pids.max").read_text() == "32"
    assert (d["blkio"] / "blkio.throttle.read_bps_device").read_text() == "8:0 2097152"
    assert (d["blkio"] / "blkio.throttle.write_bps_device").read_text() == "8:0 2097152"
    assert (d["cpuset"] / "cpuset.cpus").read_text() == "3"
    assert (d["cpuset"] / "cpuset.mems").read_text() == "0"


def test_the_capsa_cpuset_is_initialised_from_the_parent_once(fake_v1) -> None:
    driver = fake_v1.driver()
    driver.create("a", Limits(cpuset="1"))
    base = fake_v1.root / "cpuset/capsa"
    assert (base / "cpuset.cpus").read_text() == "0-3" and (base / "cpuset.mems").read_text() == "0"
    (base / "cpuset.cpus").write_text("0-2\n")  # what an admin narrowed stays as it is
    fake_v1.driver().create("b", Limits(cpuset="2"))
    assert (base / "cpuset.cpus").read_text() == "0-2\n"


def test_without_swap_accounting_swappiness_is_set_to_zero(fake_v1) -> None:
    fake_v1.tree.omit.add("memory.memsw.limit_in_bytes")
    cg = fake_v1.driver().create("a", Limits(memory_bytes=16 << 20))
    assert (cg.dirs["memory"] / "memory.swappiness").read_text() == "0"
    assert (cg.dirs["memory"] / "memory.limit_in_bytes").read_text() == str(16 << 20)


def test_a_limit_without_its_hierarchy_is_unsupported_and_nothing_is_created(fake_v1) -> None:
    parents = {c: p for c, p in fake_v1.parents.items() if c != "pids"}
    driver = V1Driver(parents, tree=fake_v1.tree, sysfs=fake_v1.sysfs)
    with pytest.raises(Unsupported, match="limit pids_max: no cgroup v1 'pids' hierarchy"):
        driver.create("a", Limits(pids_max=4))
    assert fake_v1.tree.made == []


def test_a_failed_write_removes_every_directory_created_for_the_job(fake_v1) -> None:
    fake_v1.tree.omit.add("pids.max")
    driver = fake_v1.driver()
    with pytest.raises(Unsupported, match=r"limit pids_max=4: .*pids/capsa/a/pids.max does not exist"):
        driver.create("a", Limits(memory_bytes=8 << 20, pids_max=4))
    assert driver.list() == []


def test_a_leftover_in_one_hierarchy_is_already_exists_and_only_new_dirs_are_undone(fake_v1) -> None:
    leftover = fake_v1.root / "freezer/capsa/a"
    leftover.mkdir(parents=True)
    driver = fake_v1.driver()
    with pytest.raises(AlreadyExists, match="freezer/capsa/a"):
        driver.create("a", Limits())
    assert leftover.is_dir()
    assert not (fake_v1.root / "pids/capsa/a").exists()
    assert driver.list() == ["a"]  # found so the reconciler can remove it


def test_open_finds_a_partial_job_and_remove_clears_it(fake_v1) -> None:
    (fake_v1.root / "memory/process_api/abc/capsa/a").mkdir(parents=True)
    cg = fake_v1.driver().open("a")
    assert set(cg.dirs) == {"memory"}
    cg.remove()
    assert fake_v1.driver().list() == []
    with pytest.raises(NotFound):
        fake_v1.driver().open("a")


def test_open_after_restart_sees_the_same_directories(fake_v1) -> None:
    made = fake_v1.driver().create("a", Limits(cpuset="0"))
    again = fake_v1.driver().open("a")
    assert again.dirs == made.dirs and again.procs_files() == made.procs_files()


def test_stats_and_oom_come_from_the_v1_files(fake_v1) -> None:
    cg = fake_v1.driver().create("a", Limits())
    d = cg.dirs
    (d["cpuacct"] / "cpuacct.usage").write_text("123456789\n")
    (d["cpu"] / "cpu.stat").write_text("nr_periods 10\nnr_throttled 9\nthrottled_time 800000000\n")
    (d["memory"] / "memory.usage_in_bytes").write_text("4096\n")
    (d["memory"] / "memory.max_usage_in_bytes").write_text("67108864\n")
    (d["memory"] / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    (d["pids"] / "pids.current").write_text("3\n")
    (d["pids"] / "pids.events").write_text("max 4\n")
    (d["blkio"] / "blkio.throttle.io_service_bytes_recursive").write_text(
        "8:0 Read 5\n8:0 Write 7\nTotal 12\n"
    )
    s = cg.stats()
    assert (s.cpu_usage_ns, s.cpu_nr_periods, s.cpu_nr_throttled, s.cpu_throttled_ns) == (
        123456789,
        10,
        9,
        8 * 10**8,
    )
    assert (s.memory_current, s.memory_peak, s.oom_kills, s.pids_current) == (4096, 67108864, 2, 3)
    assert (s.io_read_bytes, s.io_write_bytes, s.pids_denied) == (5, 7, 4)
    assert cg.oom_killed()


def test_device_rules_deny_all_then_allow_and_join_the_devices_hierarchy(fake_v1) -> None:
    cg = fake_v1.driver().create("a", Limits())
    cg.device_rules(["c  1:3 rwm"])
    devices = fake_v1.root / "devices/capsa/a"
    assert (devices / "devices.deny").read_text() == "a"
    assert (devices / "devices.allow").read_text() == "c 1:3 rwm"
    assert devices / "cgroup.procs" in cg.procs_files()


def test_an_invalid_device_rule_writes_nothing(fake_v1) -> None:
    cg = fake_v1.driver().create("a", Limits())
    with pytest.raises(InvalidArgument, match="device rule"):
        cg.device_rules(["c 1:3 rwm", "c 1:5 x"])
    assert not (fake_v1.root / "devices/capsa/a").exists()


def test_freeze_without_a_freezer_hierarchy_is_unsupported(fake_v1) -> None:
    parents = {c: p for c, p in fake_v1.parents.items() if c != "freezer"}
    cg = V1Driver(parents, tree=fake_v1.tree, sysfs=fake_v1.sysfs).create("a", Limits())
    with pytest.raises(Unsupported, match="freezer"):
        cg.freeze()
    cg.kill_all(timeout=0.1)  # empty: nothing to do, no freezer needed


def test_cleanup_keeps_bases_that_still_hold_jobs(fake_v1) -> None:
    driver = fake_v1.driver()
    cg = driver.create("a", Limits())
    driver.cleanup()
    assert (fake_v1.root / "pids/capsa").is_dir()
    cg.remove()
    driver.cleanup()
    assert not any(p.name == "capsa" for p in fake_v1.root.rglob("capsa"))


def test_kill_all_lifts_the_io_throttle_first(fake_v1, sda1_resolver) -> None:
    cg = fake_v1.driver(resolver=sda1_resolver).create("a", Limits(io_bps=4096, io_path=Path("/data")))
    blkio = cg.dirs["blkio"]
    (blkio / "blkio.throttle.read_iops_device").write_text("")
    cg.kill_all(timeout=0.1)
    assert (blkio / "blkio.throttle.read_bps_device").read_text() == "8:0 0"
    assert (blkio / "blkio.throttle.write_bps_device").read_text() == "8:0 0"


def test_device_rules_without_a_devices_hierarchy_are_unsupported(fake_v1) -> None:
    parents = {c: p for c, p in fake_v1.parents.items() if c != "devices"}
    cg = V1Driver(parents, tree=fake_v1.tree, sysfs=fake_v1.sysfs).create("a", Limits())
    with pytest.raises(Unsupported, match="no cgroup v1 'devices' hierarchy"):
        cg.device_rules(["c 1:3 rwm"])
