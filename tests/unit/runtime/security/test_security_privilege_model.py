"""Capability names, the default set, rlimit validation and the /proc path lists (pure checks)."""

from __future__ import annotations

import resource

import pytest

from capsa.errors import InvalidArgument
from capsa.runtime.security import (
    CAPABILITIES,
    DEFAULT_CAPABILITIES,
    DEFAULT_RLIMITS,
    MASKED_PATHS,
    READONLY_PATHS,
    parse_capabilities,
    validate_rlimits,
)

DOCKER_DEFAULT = {
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP", "SETPCAP",
    "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
}


def test_capability_numbers_follow_the_kernel_header() -> None:
    assert (CAPABILITIES["CHOWN"], CAPABILITIES["SYS_ADMIN"], CAPABILITIES["SETFCAP"]) == (0, 21, 31)
    assert CAPABILITIES["CHECKPOINT_RESTORE"] == 40 and len(CAPABILITIES) == 41


def test_default_set_is_dockers_without_mknod_and_net_raw() -> None:
    assert {"MKNOD", "NET_RAW"} == DOCKER_DEFAULT - DEFAULT_CAPABILITIES
    assert DEFAULT_CAPABILITIES < DOCKER_DEFAULT
    dangerous = {"SYS_ADMIN", "SYS_MODULE", "SYS_PTRACE", "SYS_BOOT", "SYS_RAWIO", "NET_ADMIN", "MKNOD", "BPF"}
    assert not DEFAULT_CAPABILITIES & dangerous


def test_capability_names_are_normalised() -> None:
    assert parse_capabilities(["cap_chown", "CAP_KILL", " net_bind_service "]) == {"CHOWN", "KILL", "NET_BIND_SERVICE"}


def test_unknown_capability_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="unknown capability 'CAP_ROOT'"):
        parse_capabilities(["CAP_ROOT"])


def test_default_rlimits_limit_files_and_forbid_core_dumps() -> None:
    assert validate_rlimits(DEFAULT_RLIMITS) == {"nofile": (1024, 1024), "core": (0, 0)}


def test_negative_means_unlimited() -> None:
    assert validate_rlimits({"stack": (8 << 20, -1)}) == {"stack": (8 << 20, resource.RLIM_INFINITY)}


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"files": (1, 1)}, "unknown rlimit 'files'"),
        ({"nofile": (10, 5)}, "soft limit 10 exceeds hard limit 5"),
        ({"nofile": (-1, 5)}, "exceeds"),
        ({"nofile": (1,)}, "expected \\(soft, hard\\)"),
        ({"nofile": ("a", "b")}, "expected \\(soft, hard\\)"),
    ],
)
def test_bad_rlimits_are_refused(limits: dict[str, tuple[int, int]], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_rlimits(limits)


def test_masked_and_read_only_paths_cover_runcs_defaults() -> None:
    assert {"/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/latency_stats",
            "/proc/acpi", "/proc/scsi", "/proc/asound", "/sys/firmware"} <= set(MASKED_PATHS)
    assert set(READONLY_PATHS) == {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
