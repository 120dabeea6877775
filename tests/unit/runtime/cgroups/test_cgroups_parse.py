"""Pure decisions and parsers of the cgroup drivers."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsa.errors import InvalidArgument
from capsa.runtime.cgroups import Limits, validate_name
from capsa.runtime.cgroups.parse import (
    blkio_throttle_line,
    blkio_totals,
    choose_version,
    cpu_quota,
    format_cpu_list,
    io_max_line,
    io_stat_totals,
    parse_cpu_list,
    parse_device_rule,
    parse_flat_keyed,
    parse_mountinfo,
    parse_proc_cgroup,
    resolve_cgroup_dir,
    validate_cpuset,
    validate_limits,
)

ONLINE = frozenset({0, 1, 2, 3})


@pytest.mark.parametrize(
    ("percent", "expected"),
    [(100, (100_000, 100_000)), (20, (20_000, 100_000)), (250, (250_000, 100_000)), (1, (1_000, 100_000))],
)
def test_cpu_percent_becomes_quota_over_a_100ms_period(percent: int, expected: tuple[int, int]) -> None:
    assert cpu_quota(percent) == expected


def test_cpu_quota_never_goes_below_the_kernel_minimum_of_1ms() -> None:
    assert cpu_quota(1, period_us=50_000) == (1_000, 50_000)


@pytest.mark.parametrize("bad", [0, -5, True, 1.5, "20"])
def test_cpu_percent_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(InvalidArgument, match="cpu_percent"):
        cpu_quota(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0-3,5", {0, 1, 2, 3, 5}), ("", set()), (" 1 \n", {1}), ("0,2", {0, 2}), ("7-8,0", {0, 7, 8})],
)
def test_cpu_list_parses_the_kernel_format(text: str, cpus: set[int]) -> None:
    assert parse_cpu_list(text) == frozenset(cpus)


@pytest.mark.parametrize("bad", ["3-1", "a", "0,,1", "1-", "-1", "0-1-2"])
def test_cpu_list_rejects_malformed_entries(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="cpu list"):
        parse_cpu_list(bad)


def test_cpu_list_formats_runs_as_ranges() -> None:
    assert format_cpu_list({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert format_cpu_list(set()) == ""


def test_cpuset_is_returned_canonical() -> None:
    assert validate_cpuset("1,0", ONLINE) == "0-1"
    assert validate_cpuset("0-3", ONLINE) == "0-3"


def test_cpuset_naming_an_offline_cpu_is_rejected_with_the_cpu_and_the_online_set() -> None:
    with pytest.raises(InvalidArgument, match=r"CPU 4-5 which is not online \(online: 0-3\)"):
        validate_cpuset("3-5", ONLINE)


def test_empty_cpuset_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="names no CPU"):
        validate_cpuset(" ", ONLINE)


def test_limits_are_canonicalised() -> None:
    assert validate_limits(Limits(cpuset="2,1"), ONLINE).cpuset == "1-2"
    same = Limits(memory_bytes=1 << 30)
    assert validate_limits(same, ONLINE) is same


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (Limits(memory_bytes=-1), "memory_bytes=-1 must be a positive integer"),
        (Limits(memory_bytes=4096), "below 1 MiB"),
        (Limits(pids_max=0), "pids_max=0"),
        (Limits(pids_max=True), "pids_max=True"),
        (Limits(io_bps=1000), "io_bps and io_path go together"),
        (Limits(io_path=Path("/")), "io_bps and io_path go together"),
        (Limits(cpu_percent=401), "exceeds the 4 online CPUs"),
        (Limits(cpu_percent=0), "cpu_percent"),
        (Limits(cpuset="9"), "not online"),
    ],
)
def test_nonsensical_limits_are_rejected_naming_the_limit(limits: Limits, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_limits(limits, ONLINE)


@pytest.mark.parametrize("good", ["job-1", "a", "A.b_c-9", "x" * 128])
def test_valid_names(good: str) -> None:
    assert validate_name(good) == good


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "-a", "x" * 129, "a b", "ä"])
def test_names_that_could_leave_the_base_directory_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="cgroup name"):
        validate_name(bad)


def test_flat_keyed_parses_v1_oom_control() -> None:
    text = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
    assert parse_flat_keyed(text) == {"oom_kill_disable": 0, "under_oom": 0, "oom_kill": 3}


def test_flat_keyed_parses_v2_memory_events_and_cpu_stat() -> None:
    events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n"
    assert parse_flat_keyed(events)["oom_kill"] == 1
    cpu = "usage_usec 5000\nuser_usec 4000\nsystem_usec 1000\nnr_periods 10\nnr_throttled 7\nthrottled_usec 900\n"
    assert parse_flat_keyed(cpu)["nr_throttled"] == 7


def test_flat_keyed_skips_lines_that_are_not_key_number() -> None:
    assert parse_flat_keyed("populated 1\nweird line here\nmax max\n\n") == {"populated": 1}


def test_io_stat_sums_read_and_write_bytes_over_devices() -> None:
    text = (
        "254:0 rbytes=4096 wbytes=2097152 rios=1 wios=32 dbytes=0 dios=0\n"
        "8:0 rbytes=100 wbytes=50 rios=1 wios=1 dbytes=0 dios=0\n"
    )
    assert io_stat_totals(text) == (4196, 2097202)
    assert io_stat_totals("") == (0, 0)


def test_blkio_rwstat_sums_read_and_write_over_devices() -> None:
    text = (
        "254:0 Read 4096\n254:0 Write 2097152\n254:0 Sync 2101248\n254:0 Async 0\n"
        "254:0 Discard 0\n254:0 Total 2101248\n8:0 Read 1\n8:0 Write 2\nTotal 2101251\n"
    )
    assert blkio_totals(text) == (4097, 2097154)


def test_throttle_lines_name_the_device() -> None:
    assert io_max_line((254, 0), 1048576) == "254:0 rbps=1048576 wbps=1048576"
    assert blkio_throttle_line((8, 16), 5) == "8:16 5"


@pytest.mark.parametrize(
    ("entry", "normal"),
    [("c 1:3 rwm", "c 1:3 rwm"), ("b  *:*  m", "b *:* m"), ("a", "a"), ("c 136:* rw", "c 136:* rw")],
)
def test_device_rules_are_validated_and_normalised(entry: str, normal: str) -> None:
    assert parse_device_rule(entry) == normal


@pytest.mark.parametrize("bad", ["c 1:3", "x 1:3 r", "c 1:3 rwx", "c 1:3 rr", "c 1 rwm", "c a:b r", ""])
def test_malformed_device_rules_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="device rule"):
        parse_device_rule(bad)


def test_proc_cgroup_lines_parse_v1_and_v2() -> None:
    text = "9:name=systemd:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/\n0::/user.slice\n"
    lines = parse_proc_cgroup(text)
    assert lines[1].controllers == frozenset({"memory"}) and lines[1].path == "/process_api/abc"
    assert lines[2].controllers == frozenset({"cpu", "cpuacct"})
    assert (
        lines[3].hierarchy_id == 0 and lines[3].controllers == frozenset() and lines[3].path == "/user.slice"
    )


def test_mountinfo_parses_optional_fields_and_escapes() -> None:
    text = (
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:17 master:2 - cgroup cgroup rw,memory\n"
        "90 23 0:51 / /mnt/with\\040space rw - overlay overlay rw,lowerdir=/l1:/l2,upperdir=/u,workdir=/w\n"
    )
    mem, ovl = parse_mountinfo(text)
    assert mem.fstype == "cgroup" and mem.v1_controllers == frozenset({"memory"}) and mem.dev == (0, 32)
    assert ovl.mountpoint == "/mnt/with space"
    assert ovl.option("upperdir") == "/u" and ovl.option("lowerdir") == "/l1:/l2" and ovl.option("x") is None


def test_named_hierarchies_carry_no_controllers() -> None:
    (m,) = parse_mountinfo("40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n")
    assert m.v1_controllers == frozenset()


def test_cgroup_dir_honours_a_mount_that_exposes_only_a_subtree() -> None:
    (m,) = parse_mountinfo("50 31 0:40 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    assert resolve_cgroup_dir([m], "/docker/abc/sub") == Path("/sys/fs/cgroup/memory/sub")
    assert resolve_cgroup_dir([m], "/docker/abc") == Path("/sys/fs/cgroup/memory")
    assert resolve_cgroup_dir([m], "/other") is None
    assert resolve_cgroup_dir([m], "/docker/abcd") is None


@pytest.mark.parametrize(
    ("v2", "v1", "version"),
    [
        (frozenset({"cpu", "memory", "pids", "io"}), frozenset(), 2),  # pure v2
        (frozenset({"hugetlb"}), frozenset({"cpu", "memory", "pids", "freezer"}), 1),  # this host: hybrid
        (frozenset(), frozenset({"cpu", "cpuacct", "memory"}), 1),  # hybrid with an empty unified tree
        (None, frozenset({"memory", "pids"}), 1),  # legacy v1 only
        (frozenset({"memory"}), frozenset({"cpu"}), 2),  # controllers moved to v2 win
        (frozenset(), frozenset(), 2),  # pure v2 that delegated nothing: kill/freeze still work
        (None, frozenset(), 0),  # nothing mounted
    ],
)
def test_version_choice(v2: frozenset[str] | None, v1: frozenset[str], version: int) -> None:
    assert choose_version(v2, v1) == version
