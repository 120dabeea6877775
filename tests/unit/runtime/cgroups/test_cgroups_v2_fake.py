"""The cgroup v2 driver against a fake unified tree (this host's own v2 tree has no controllers)."""

from __future__ import annotations

import errno
import signal
from pathlib import Path

import pytest

from capsa.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Timeout, Unsupported
from capsa.runtime.cgroups import BlockResolver, Limits, V2JobCgroup
from capsa.runtime.cgroups import v2 as v2_module

ALL_LIMITS = Limits(
    cpu_percent=20, cpuset="2,1", memory_bytes=64 << 20, pids_max=32, io_bps=1 << 20, io_path=Path("/data")
)


def test_create_enables_controllers_down_to_the_base_and_writes_every_limit(fake_v2, sda1_resolver) -> None:
    cg = fake_v2.driver(resolver=sda1_resolver).create("job1", ALL_LIMITS)
    job = fake_v2.root / "capsa" / "job1"
    assert isinstance(cg, V2JobCgroup) and cg.path == job and cg.version == 2
    assert (fake_v2.root / "cgroup.subtree_control").read_text() == "+cpu +cpuset +io +memory +pids"
    assert (fake_v2.root / "capsa/cgroup.subtree_control").read_text() == "+cpu +cpuset +io +memory +pids"
    assert (job / "cpu.max").read_text() == "20000 100000"
    assert (job / "cpuset.cpus").read_text() == "1-2"
    assert (job / "cpuset.mems").read_text() == ""  # empty means the parent's on v2
    assert (job / "memory.max").read_text() == str(64 << 20)
    assert (job / "memory.swap.max").read_text() == "0"
    assert (job / "pids.max").read_text() == "32"
    assert (job / "io.max").read_text() == "8:0 rbps=1048576 wbps=1048576"  # the disk, not the partition


def test_unset_limits_leave_the_kernel_defaults(fake_v2) -> None:
    job = fake_v2.driver().create("job1", Limits()).path
    assert (job / "cpu.max").read_text() == "max 100000\n"
    assert (job / "memory.max").read_text() == "max\n"
    assert (job / "pids.max").read_text() == "max\n"


def test_controllers_already_enabled_are_not_written_again(fake_v2) -> None:
    (fake_v2.root / "cgroup.subtree_control").write_text("cpu cpuset io memory pids\n")
    driver = fake_v2.driver()
    driver.create("a", Limits(pids_max=3))
    assert (fake_v2.root / "cgroup.subtree_control").read_text() == "cpu cpuset io memory pids\n"
    assert driver.enabled_controllers() == frozenset({"cpu", "cpuset", "io", "memory", "pids"})


def test_a_limit_whose_controller_is_not_delegated_is_unsupported_and_creates_no_job(fake_v2) -> None:
    (fake_v2.root / "cgroup.controllers").write_text("cpu pids\n")
    driver = fake_v2.driver()
    with pytest.raises(
        Unsupported, match=r"limit memory_bytes: the cgroup v2 'memory' controller is not available"
    ):
        driver.create("job1", Limits(memory_bytes=64 << 20))
    assert driver.list() == []


def test_swap_is_left_alone_when_the_kernel_has_no_swap_accounting(fake_v2) -> None:
    fake_v2.tree.omit.add("memory.swap.max")
    job = fake_v2.driver().create("job1", Limits(memory_bytes=8 << 20)).path
    assert (job / "memory.max").read_text() == str(8 << 20)
    assert not (job / "memory.swap.max").exists()


def test_a_failed_write_names_the_limit_and_file_and_removes_the_job(fake_v2) -> None:
    fake_v2.tree.omit.add("pids.max")
    driver = fake_v2.driver()
    with pytest.raises(Unsupported, match=r"limit pids_max=5: .*capsa/job1/pids.max does not exist"):
        driver.create("job1", Limits(memory_bytes=8 << 20, pids_max=5))
    assert not (fake_v2.root / "capsa/job1").exists()
    assert driver.list() == []


def test_enabling_controllers_refused_by_the_kernel_explains_delegation(fake_v2, monkeypatch) -> None:
    # The kernel answers EBUSY when the daemon's own (non-root) cgroup holds processes.
    def busy(path: Path, value: str, *, what: str) -> None:
        if path.name == "cgroup.subtree_control":
            raise FailedPrecondition(f"cannot apply {what}: writing {value!r} to {path} failed: busy")

    monkeypatch.setattr(v2_module, "_write", busy)
    with pytest.raises(FailedPrecondition, match=r"cgroup.subtree_control .*delegated cgroup"):
        fake_v2.driver().create("job1", Limits())


def test_creating_an_existing_job_is_already_exists_and_leaves_it_intact(fake_v2) -> None:
    driver = fake_v2.driver()
    driver.create("job1", Limits(pids_max=7))
    with pytest.raises(AlreadyExists, match="job1"):
        driver.create("job1", Limits(pids_max=9))
    assert (fake_v2.root / "capsa/job1/pids.max").read_text() == "7"


def test_invalid_limits_create_nothing(fake_v2) -> None:
    driver = fake_v2.driver()
    with pytest.raises(InvalidArgument, match="not online"):
        driver.create("job1", Limits(cpuset="7"))
    with pytest.raises(InvalidArgument, match="cgroup name"):
        driver.create("../escape", Limits())
    assert fake_v2.tree.made == []


def test_open_list_and_remove_after_a_restart(fake_v2) -> None:
    fake_v2.driver().create("b", Limits())
    fake_v2.driver().create("a", Limits())
    restarted = fake_v2.driver()
    assert restarted.list() == ["a", "b"]
    cg = restarted.open("a")
    assert cg.procs_files() == [fake_v2.root / "capsa/a/cgroup.procs"]
    cg.remove()
    cg.remove()  # idempotent
    assert restarted.list() == ["b"]
    with pytest.raises(NotFound, match="'a' does not exist"):
        restarted.open("a")


def test_cleanup_removes_the_base_only_when_no_job_is_left(fake_v2) -> None:
    driver = fake_v2.driver()
    cg = driver.create("a", Limits())
    driver.cleanup()
    assert (fake_v2.root / "capsa").is_dir()
    cg.remove()
    driver.cleanup()
    assert not (fake_v2.root / "capsa").exists()


def test_join_self_writes_zero_into_cgroup_procs(fake_v2) -> None:
    cg = fake_v2.driver().create("a", Limits())
    cg.join_self()
    assert (cg.path / "cgroup.procs").read_text() == "0"


def test_add_pid_writes_the_pid(fake_v2) -> None:
    cg = fake_v2.driver().create("a", Limits())
    cg.add_pid(4242)
    assert (cg.path / "cgroup.procs").read_text() == "4242"


def test_pids_include_nested_cgroups_and_emptiness_follows_cgroup_events(fake_v2) -> None:
    cg = fake_v2.driver().create("a", Limits())
    (cg.path / "cgroup.procs").write_text("11\n12\n")
    (cg.path / "inner").mkdir()
    (cg.path / "inner/cgroup.procs").write_text("13\n")
    assert sorted(cg.pids()) == [11, 12, 13]
    assert cg.is_empty()  # cgroup.events says populated 0
    (cg.path / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    assert not cg.is_empty()


def test_stats_are_read_from_the_v2_files(fake_v2) -> None:
    job = fake_v2.driver().create("a", Limits(memory_bytes=8 << 20, pids_max=9)).path
    (job / "cpu.stat").write_text(
        "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 10\nnr_throttled 4\nthrottled_usec 250\n"
    )
    (job / "memory.current").write_text("4096\n")
    (job / "memory.peak").write_text("8192\n")
    (job / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n")
    (job / "pids.current").write_text("2\n")
    (job / "pids.events").write_text("max 6\n")
    (job / "io.stat").write_text("8:0 rbytes=10 wbytes=20 rios=1 wios=1 dbytes=0 dios=0\n")
    s = fake_v2.driver().open("a").stats()
    assert (s.cpu_usage_ns, s.cpu_nr_periods, s.cpu_nr_throttled, s.cpu_throttled_ns) == (
        1_500_000,
        10,
        4,
        250_000,
    )
    assert (s.memory_current, s.memory_peak, s.oom_kills, s.pids_current) == (4096, 8192, 1, 2)
    assert (s.io_read_bytes, s.io_write_bytes, s.pids_denied) == (10, 20, 6)
    assert fake_v2.driver().open("a").oom_killed()


def test_stats_report_none_for_counters_this_kernel_lacks(fake_v2) -> None:
    fake_v2.tree.omit.update({"memory.peak", "io.stat"})
    cg = fake_v2.driver().create("a", Limits())
    s = cg.stats()
    assert s.memory_peak is None and s.io_read_bytes is None and s.memory_current == 0
    assert not cg.oom_killed()


def test_kill_all_uses_cgroup_kill(fake_v2) -> None:
    cg = fake_v2.driver().create("a", Limits())
    cg.kill_all()
    assert (cg.path / "cgroup.kill").read_text() == "1"


def test_kill_all_times_out_when_the_cgroup_stays_populated(fake_v2) -> None:
    cg = fake_v2.driver().create("a", Limits())
    (cg.path / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    with pytest.raises(Timeout, match="processes remain"):
        cg.kill_all(timeout=0.05)


def test_without_cgroup_kill_the_freeze_and_signal_loop_runs(fake_v2) -> None:
    fake_v2.tree.omit.add("cgroup.kill")
    cg = fake_v2.driver().create("a", Limits())
    (cg.path / "cgroup.events").write_text("populated 1\nfrozen 1\n")  # never empties, no pids listed
    with pytest.raises(Timeout, match=f"after signal {int(signal.SIGKILL)}"):
        cg.kill_all(timeout=0.1)
    assert (cg.path / "cgroup.freeze").read_text() == "0"  # thawed again after the round


def test_freeze_and_thaw_write_cgroup_freeze(fake_v2) -> None:
    cg = fake_v2.driver().create("a", Limits())
    (cg.path / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    cg.freeze()
    assert (cg.path / "cgroup.freeze").read_text() == "1"
    cg.thaw()
    assert (cg.path / "cgroup.freeze").read_text() == "0"


def test_freeze_times_out_when_the_kernel_never_reports_frozen(fake_v2) -> None:
    cg = fake_v2.driver().create("a", Limits())
    with pytest.raises(Timeout, match="did not freeze"):
        cg.freeze(timeout=0.05)


def test_device_rules_on_v2_are_unsupported_and_name_ebpf(fake_v2) -> None:
    cg = fake_v2.driver().create("a", Limits())
    with pytest.raises(Unsupported, match="eBPF"):
        cg.device_rules(["c 1:3 rwm"])


def test_remove_of_a_populated_job_kills_first(fake_v2, monkeypatch) -> None:
    cg = fake_v2.driver().create("a", Limits())
    (cg.path / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    kills = []

    def kill_native(self: V2JobCgroup) -> bool:  # what the kernel does on "1" > cgroup.kill
        kills.append(self.name)
        (self.path / "cgroup.events").write_text("populated 0\nfrozen 0\n")
        return True

    monkeypatch.setattr(V2JobCgroup, "_kill_native", kill_native)
    cg.remove()
    assert kills == ["a"] and not cg.exists()


def test_remove_retries_while_the_kernel_reports_busy_then_gives_up(fake_v2) -> None:
    cg = fake_v2.driver().create("a", Limits())
    # The fake refuses rmdir while a pid is listed; 4194305 is above the kernel's highest pid_max.
    (cg.path / "cgroup.procs").write_text("4194305\n")
    with pytest.raises(FailedPrecondition, match="cannot remove cgroup"):
        cg.remove(timeout=0.05)


def test_io_limit_on_a_path_without_a_disk_fails_before_creating(fake_v2) -> None:
    resolver = BlockResolver(sysfs=fake_v2.sysfs, dev_of=lambda p: (0, 48), mountinfo=lambda: "")
    with pytest.raises(FailedPrecondition, match="no mount found for io_path"):
        fake_v2.driver(resolver=resolver).create("a", Limits(io_bps=1, io_path=Path("/x")))
    assert fake_v2.tree.made == []


def test_kill_all_lifts_the_io_throttle_first(fake_v2, sda1_resolver) -> None:
    cg = fake_v2.driver(resolver=sda1_resolver).create("a", Limits(io_bps=4096, io_path=Path("/data")))
    assert (cg.path / "io.max").read_text() == "8:0 rbps=4096 wbps=4096"
    cg.kill_all()
    assert (cg.path / "io.max").read_text() == "8:0 rbps=max wbps=max riops=max wiops=max"


def test_a_refused_mkdir_names_the_directory(fake_v2, monkeypatch) -> None:
    driver = fake_v2.driver()
    driver.enabled_controllers()

    def refuse(path: Path) -> None:  # what cgroup.max.descendants makes the kernel answer
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable", str(path))

    monkeypatch.setattr(fake_v2.tree, "mkdir", refuse)
    with pytest.raises(FailedPrecondition, match=r"cannot create cgroup directory .*capsa/a: Resource temp"):
        driver.create("a", Limits())
