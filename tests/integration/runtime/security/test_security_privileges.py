"""Capabilities, no_new_privs and rlimits applied to a throwaway process, without seccomp, so that
what is refused is refused by the privilege model alone."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

import pytest

from capsa.runtime.security import CAPABILITIES, DEFAULT_CAPABILITIES
from tests.integration.runtime.security.conftest import Run

SYS_ADMIN = 1 << CAPABILITIES["SYS_ADMIN"]
NOBODY = 65534


def _caps(status: dict[str, str], field: str) -> int:
    return int(status[field], 16)


def _mask(names: frozenset[str]) -> int:
    return sum(1 << CAPABILITIES[n] for n in names)


def test_drop_removes_sys_admin_from_bounding_and_effective_sets(run: Run) -> None:
    host = run(probe="status").value
    assert _caps(host, "CapBnd") & SYS_ADMIN and _caps(host, "CapEff") & SYS_ADMIN
    dropped = run("--drop-caps", probe="status").value
    expected = _mask(DEFAULT_CAPABILITIES) & _caps(host, "CapBnd")
    assert _caps(dropped, "CapBnd") == expected
    assert _caps(dropped, "CapEff") == expected == _caps(dropped, "CapPrm")
    assert _caps(dropped, "CapInh") == 0 and _caps(dropped, "CapAmb") == 0
    assert not _caps(dropped, "CapBnd") & SYS_ADMIN


def test_capabilities_do_not_come_back_through_execve_as_root(run: Run) -> None:
    host = run(argv=["grep", "^CapEff", "/proc/self/status"])
    assert int(host.stdout.split()[1], 16) & SYS_ADMIN
    dropped = run("--drop-caps", argv=["grep", "^CapEff", "/proc/self/status"])
    assert dropped.returncode == 0, dropped.stderr
    effective = int(dropped.stdout.split()[1], 16)
    assert effective and not effective & SYS_ADMIN
    assert effective & ~_mask(DEFAULT_CAPABILITIES) == 0


def test_mount_is_refused_without_seccomp_once_capabilities_are_dropped(run: Run) -> None:
    assert run(probe="mount", arg="/mnt").ok
    assert run("--drop-caps", probe="mount", arg="/mnt").errno == errno.EPERM


def test_mknod_of_a_device_is_refused(run: Run, tmp_path: Path) -> None:
    assert run(probe="mknod", arg=str(tmp_path / "host-null")).ok
    assert stat.S_ISCHR((tmp_path / "host-null").lstat().st_mode)
    assert run("--drop-caps", probe="mknod", arg=str(tmp_path / "job-null")).errno == errno.EPERM


def test_raw_sockets_are_refused(run: Run) -> None:
    assert run(probe="socket", arg="2,3,1").ok  # AF_INET, SOCK_RAW, IPPROTO_ICMP
    assert run("--drop-caps", probe="socket", arg="2,3,1").errno == errno.EPERM


@pytest.fixture
def setuid_copy(tmp_path: Path) -> Path:
    def make(name: str) -> Path:
        source = shutil.which(name)
        if source is None:
            pytest.skip(f"{name} not installed")
        target = tmp_path / f"suid-{name}"
        shutil.copy(source, target)
        os.chown(target, 0, 0)
        os.chmod(target, 0o4755)
        return target

    make("id")
    make("cat")
    if os.statvfs(tmp_path).f_flag & os.ST_NOSUID:
        pytest.skip("the temporary directory is on a nosuid mount")
    return tmp_path


def test_setuid_binary_gains_nothing_under_no_new_privs(run: Run, setuid_copy: Path) -> None:
    suid_id = str(setuid_copy / "suid-id")
    host = run("--uid", str(NOBODY), "--exec-fd-of", suid_id, argv=["id"])
    assert host.returncode == 0, host.stderr
    assert "euid=0(" in host.stdout  # the setuid bit works for uid 65534 without the defence
    confined = run("--nnp", "--uid", str(NOBODY), "--exec-fd-of", suid_id, argv=["id"])
    assert confined.returncode == 0, confined.stderr
    assert "euid=" not in confined.stdout and confined.stdout.startswith(f"uid={NOBODY}(")


def test_no_new_privs_shows_in_status_and_keeps_all_uids(run: Run, setuid_copy: Path) -> None:
    suid_cat = str(setuid_copy / "suid-cat")
    argv = ["cat", "/proc/self/status"]
    host = run("--uid", str(NOBODY), "--exec-fd-of", suid_cat, argv=argv)
    host_status = dict(line.split(":\t", 1) for line in host.stdout.splitlines() if ":\t" in line)
    assert host_status["Uid"].split()[1] == "0" and host_status["NoNewPrivs"] == "0"
    confined = run("--nnp", "--uid", str(NOBODY), "--exec-fd-of", suid_cat, argv=argv)
    status = dict(line.split(":\t", 1) for line in confined.stdout.splitlines() if ":\t" in line)
    assert status["Uid"].split() == [str(NOBODY)] * 4
    assert status["NoNewPrivs"] == "1"


def test_default_rlimits_reach_the_job(run: Run) -> None:
    host = run(argv=["/bin/sh", "-c", "ulimit -n; ulimit -c"])
    assert host.stdout.split() != ["1024", "0"]
    limited = run("--rlimits", argv=["/bin/sh", "-c", "ulimit -n; ulimit -Hn; ulimit -c"])
    assert limited.stdout.split() == ["1024", "1024", "0"]
