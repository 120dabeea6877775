"""Masked /proc entries and read-only /proc/sys and /sys, built in a throwaway mount namespace.

The same job-like root is built three ways: as the host shows it (proc + a bind of /sys), hardened
(capsa's defaults), and with the /sys fallback used when a fresh sysfs cannot be mounted.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from tests.integration.runtime.security.conftest import Run


def _root(run: Run, mode: str, base: Path) -> dict[str, Any]:
    return run(probe="procfs", arg=f"{mode}:{base}").value


@pytest.fixture
def host(run: Run, tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "host").mkdir()
    return _root(run, "host", tmp_path / "host")


@pytest.fixture
def hardened(run: Run, tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "hardened").mkdir()
    return _root(run, "hardened", tmp_path / "hardened")


def test_sysfs_is_mounted_fresh_and_read_only(host: dict[str, Any], hardened: dict[str, Any]) -> None:
    assert hardened["sys"] == "sysfs"
    assert host["sys_ro"] is False and host["sys_write"] == "writable"
    assert hardened["sys_ro"] is True and hardened["sys_write"] == f"errno {errno.EROFS}"
    # A fresh sysfs carries none of the host's submounts: no cgroupfs under /sys/fs/cgroup.
    assert host["cgroup_listing"] > 0 and hardened["cgroup_listing"] == 0


def test_sensitive_proc_files_read_empty(host: dict[str, Any], hardened: dict[str, Any]) -> None:
    assert host["timer_list"] > 0
    assert hardened["timer_list"] == 0
    assert "/proc/keys" in hardened["masked"] and hardened["keys"] == 0
    if host["keys"] == 0:
        pytest.skip("no key visible on the host either; the timer_list check above stands")


def test_sensitive_directories_are_empty(host: dict[str, Any], hardened: dict[str, Any]) -> None:
    assert host["firmware"] > 0  # /proc/acpi exists but is empty on this VM: firmware carries the proof
    assert hardened["firmware"] == 0 and hardened["acpi"] == 0
    assert {"/proc/acpi", "/sys/firmware"} <= set(hardened["masked"])


def test_proc_sys_and_irq_are_read_only(host: dict[str, Any], hardened: dict[str, Any]) -> None:
    assert host["proc_sys"] == "writable" and host["proc_irq_ro"] is False
    assert hardened["proc_sys"] == f"errno {errno.EROFS}" and hardened["proc_irq_ro"] is True
    assert {"/proc/sys", "/proc/irq", "/proc/bus", "/proc/fs"} <= set(hardened["readonly"])


def test_sys_fallback_bind_is_read_only_down_to_submounts(run: Run, host: dict[str, Any], tmp_path: Path) -> None:
    assert host["cgroup_ro"] is False
    (tmp_path / "fallback").mkdir()
    fallback = _root(run, "fallback", tmp_path / "fallback")
    assert fallback["sys_ro"] is True and fallback["sys_write"] == f"errno {errno.EROFS}"
    assert fallback["cgroup_listing"] > 0 and fallback["cgroup_ro"] is True
