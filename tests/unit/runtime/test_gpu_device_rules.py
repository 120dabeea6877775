"""What reaches a job's device cgroup and /dev: capsa.runtime.devices, and the spec fields GPUs fill."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from capsa.errors import InvalidArgument
from capsa.runtime.devices import BASE_DEVICE_RULES, job_device_rules, node_rule, validate_device_target
from capsa.runtime.spec import DeviceSpec, JobSpec, MountSpec


def spec(**fields: object) -> JobSpec:
    return JobSpec(job_id="j1", argv=("true",), env={}, hostname="h", job_dir="/tmp/j1", **fields)  # type: ignore[arg-type]


def test_every_job_gets_exactly_the_minimal_dev_rules_without_mknod() -> None:
    assert job_device_rules(spec()) == list(BASE_DEVICE_RULES)
    assert all(not rule.endswith("m") and "m" not in rule.split()[-1] for rule in BASE_DEVICE_RULES)
    assert {rule.split()[1] for rule in BASE_DEVICE_RULES} == {
        "1:3", "1:5", "1:7", "1:8", "1:9", "5:0", "5:2", "136:*"}


def test_spec_extras_follow_the_minimal_rules() -> None:
    assert job_device_rules(spec(device_allow=("c 195:0 rw", "c 195:255 rw")))[-2:] == ["c 195:0 rw", "c 195:255 rw"]


def test_a_block_device_in_the_root_mounts_is_allowed_so_stage_two_can_mount_it() -> None:
    loop = next((f"/dev/loop{i}" for i in range(8) if os.path.exists(f"/dev/loop{i}")), None)
    if loop is None:
        pytest.skip("no /dev/loopN node on this host")
    rdev = os.stat(loop).st_rdev
    rules = job_device_rules(spec(root_mounts=(MountSpec("ext4", loop, ("ro",)), MountSpec("overlay", "overlay"))))
    assert rules == [*BASE_DEVICE_RULES, f"b {os.major(rdev)}:{os.minor(rdev)} rw"]


def test_node_rule_reads_type_and_numbers_from_the_node() -> None:
    assert node_rule("/dev/null") == "c 1:3 rw"
    assert node_rule("/dev/zero", "r") == "c 1:5 r"
    with pytest.raises(InvalidArgument, match="not a device node"):
        node_rule("/etc/hostname")


@pytest.mark.parametrize("target", ["/dev/nvidia0", "/dev/dri/card0", "/dev/extra/allowed"])
def test_device_targets_below_dev_are_accepted(target: str) -> None:
    assert validate_device_target(target) == target


@pytest.mark.parametrize("target", ["/dev/", "/etc/passwd", "/dev/../etc/passwd", "/dev//x", "/dev/./x", "dev/x",
                                    "/devx/y"])
def test_device_targets_outside_dev_or_with_dot_segments_are_refused(target: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_device_target(target)


def test_devices_and_rules_survive_the_trip_to_the_zygote(tmp_path: Path) -> None:
    node = tmp_path / "nvidia0"
    if os.geteuid() == 0:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(195, 0))
    original = spec(devices=(DeviceSpec(str(node), "/dev/nvidia0"),), device_allow=("c 195:0 rw",))
    again = JobSpec.from_dict(json.loads(original.to_json()))
    assert again == original
    assert JobSpec.from_dict(json.loads(spec().to_json())).devices == ()
