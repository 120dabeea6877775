"""The escape suite: real attacks from inside a job through a real daemon, each one paired with the
same attempt on the host (marked ``host_probe``) showing that it works there, so a probe can never
pass because the attack itself was broken.

Most probes run in one batch job (default seccomp profile, host network, root, --max-pids 64);
the ones that need their own job settings (``--network none``, ``--user 65534``) or could end the
batch if a defence were missing (reboot kills the job's PID namespace) run in jobs of their own.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from security_helpers import job_cgroup_view, loop_disk, run_in_job, run_on_host, scratch_cgroup

from tests.fixtures.daemon import RunningDaemon

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"),
                                reason="the probes carry syscall numbers for x86_64 and aarch64 only")

EPERM, EROFS, ENOENT, ENOSYS = errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOSYS


@dataclass(frozen=True)
class Probe:
    name: str
    defence: str                            # what stops it inside a job
    job_errnos: tuple[int, ...] = ()        # the errno the attempt must fail with in a job (empty: any failure)
    host_unrefused: tuple[int, ...] = ()    # host errnos that still mean "reached the kernel, not refused"
    host_may_lack: str = ""                 # a kernel feature this host may not have (then the host test skips)


PROBES = [
    Probe("mount", "seccomp denies mount; no CAP_SYS_ADMIN", (EPERM,)),
    Probe("umount", "seccomp denies umount2; no CAP_SYS_ADMIN", (EPERM,)),
    Probe("pivot_root", "seccomp denies pivot_root; no CAP_SYS_ADMIN", (EPERM,)),
    Probe("userns", "seccomp denies unshare (CLONE_NEWUSER)", (EPERM,)),
    Probe("setns", "seccomp denies setns; no CAP_SYS_ADMIN; host namespaces not even visible", (EPERM,)),
    Probe("host_pids", "own PID namespace: no host process is visible in /proc"),
    Probe("ptrace", "seccomp denies ptrace; no CAP_SYS_PTRACE", (EPERM,)),
    # This kernel is built without kexec and modules: on the host those calls reach the kernel and get
    # ENOSYS from it; in a job the filter answers EPERM before the kernel ever sees them.
    Probe("kexec_load", "seccomp denies kexec_load; no CAP_SYS_BOOT", (EPERM,), (ENOSYS,)),
    Probe("init_module", "seccomp denies init_module; no CAP_SYS_MODULE", (EPERM,), (ENOSYS,)),
    Probe("finit_module", "seccomp denies finit_module; no CAP_SYS_MODULE", (EPERM,), (ENOSYS,)),
    Probe("bpf", "seccomp denies bpf; no CAP_BPF / CAP_SYS_ADMIN", (EPERM,)),
    Probe("userfaultfd", "seccomp denies userfaultfd", (EPERM,)),
    Probe("keyctl", "seccomp denies keyctl (keyrings are not namespaced)", (EPERM,)),
    Probe("proc_sys_hostname", "/proc/sys is mounted read-only", (EROFS,)),
    Probe("proc_sys_core_pattern", "/proc/sys is mounted read-only (core_pattern runs a host program)", (EROFS,)),
    Probe("sysrq_trigger", "/proc/sysrq-trigger is read-only", (EROFS, ENOENT),
          host_may_lack="/proc/sysrq-trigger (CONFIG_MAGIC_SYSRQ); see proc_irq for the same read-only mount"),
    Probe("proc_irq", "/proc/irq is mounted read-only (stands in for sysrq-trigger where the kernel lacks it)",
          (EROFS,)),
    Probe("kcore", "/proc/kcore is masked", (), host_may_lack="/proc/kcore (CONFIG_PROC_KCORE); see timer_list"),
    Probe("timer_list", "/proc/timer_list is masked (stands in for kcore where the kernel lacks it)"),
    Probe("proc_keys", "/proc/keys is masked"),
    Probe("kmsg", "the job's /dev has no kmsg (and the device cgroup would refuse c 1:11)", (ENOENT,)),
    Probe("mknod_disk", "CAP_MKNOD dropped; the device cgroup allows no block device", (EPERM,)),
    Probe("cgroup_move", "the job's cgroup tree is a read-only mount showing only its own cgroup", (EROFS,)),
    Probe("cgroup_limit", "the job's own cgroup files are read-only", (EROFS,)),
    Probe("remount_rw", "seccomp denies mount; no CAP_SYS_ADMIN", (EPERM,)),
    Probe("chroot_escape", "pivot_root, not chroot: the host's root is detached, nothing to walk up to"),
    Probe("clock_settime", "seccomp denies clock_settime; no CAP_SYS_TIME", (EPERM,)),
    Probe("settimeofday", "seccomp denies settimeofday; no CAP_SYS_TIME", (EPERM,)),
    Probe("swapon", "seccomp denies swapon; no CAP_SYS_ADMIN", (EPERM,)),
    Probe("acct", "seccomp denies acct; no CAP_SYS_PACCT", (EPERM,)),
    Probe("open_by_handle_at", "seccomp denies open_by_handle_at; no CAP_DAC_READ_SEARCH", (EPERM,)),
    Probe("personality", "seccomp allows only safe personality values", (EPERM,)),
]
BATCH = [p.name for p in PROBES]


@pytest.fixture(scope="module")
def params(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    host_dir = tmp_path_factory.mktemp("escape")
    marker = host_dir / "host-marker"
    marker.write_text("only the host has this file")
    with loop_disk(host_dir / "disk.img", b"HOST DISK SECTOR") as disk:
        yield {"host_pid": os.getpid(), "disk": list(disk), "marker": str(marker)}


@pytest.fixture(scope="module")
def job_report(daemon: RunningDaemon, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return run_in_job(daemon, [*BATCH, "cgroup_view"], params, "--max-pids", "64")


@pytest.fixture(scope="module")
def host_report(params: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    with scratch_cgroup("pids", f"capsa-escape-probe-{os.getpid()}") as cgroup:
        return run_on_host(BATCH, {**params, "host_cgroup": str(cgroup)}, scratch=tmp_path_factory.mktemp("host"))


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.name)
def test_attack_fails_inside_a_job(probe: Probe, job_report: dict[str, dict[str, Any]]) -> None:
    outcome = job_report[probe.name]
    assert not outcome["ok"], f"{probe.name} succeeded in a job ({probe.defence}): {outcome}"
    if probe.job_errnos:
        assert outcome["errno"] in probe.job_errnos, (
            f"{probe.name}: expected {[errno.errorcode[e] for e in probe.job_errnos]} ({probe.defence}), got {outcome}")


@pytest.mark.host_probe
@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.name)
def test_attack_works_on_the_host(probe: Probe, host_report: dict[str, dict[str, Any]]) -> None:
    outcome = host_report[probe.name]
    if probe.host_may_lack and outcome["errno"] == ENOENT:
        pytest.skip(f"this kernel has no {probe.host_may_lack}")
    if outcome["errno"] in probe.host_unrefused:
        return   # reached the kernel and was not refused for lack of privilege
    assert outcome["ok"], f"{probe.name} does not work on the host, so the job probe proves nothing: {outcome}"


def test_job_sees_only_itself_in_proc(job_report: dict[str, dict[str, Any]]) -> None:
    seen = job_report["host_pids"]["value"]
    assert seen["pid1"] == "python3" and seen["pids"] <= 3


def test_job_reads_its_own_cgroup_limits_through_the_read_only_view(job_report: dict[str, dict[str, Any]]) -> None:
    view = job_report["cgroup_view"]
    assert view["ok"], view
    assert view["value"]["pids.max"] == "64"
    if job_cgroup_view("pids").endswith("/pids"):   # v1: one read-only mount per hierarchy holding the job
        assert {"cpu", "memory", "pids", "devices"} <= set(view["value"]["hierarchies"])
        assert "systemd" not in view["value"]["hierarchies"]   # the job has no cgroup of its own there
    else:
        assert "pids.max" in view["value"]["hierarchies"]


def test_chroot_escape_ends_at_the_jobs_own_root(job_report: dict[str, dict[str, Any]]) -> None:
    listing = job_report["chroot_escape"]["value"]
    assert "work" in listing and "capsules" in listing   # the job's root, not the host's


# -- probes that need a job of their own ----------------------------------------------------------
def test_reboot_is_refused_in_a_job(daemon: RunningDaemon, params: dict[str, Any]) -> None:
    outcome = run_in_job(daemon, ["reboot"], params)["reboot"]
    assert not outcome["ok"] and outcome["errno"] == EPERM, outcome


@pytest.mark.host_probe
def test_reboot_works_on_the_host_in_a_pid_namespace(params: dict[str, Any], tmp_path: Path) -> None:
    outcome = run_on_host(["reboot"], params, scratch=tmp_path)["reboot"]
    assert outcome["ok"], outcome   # the namespace's init was killed by the kernel


def test_raw_socket_is_refused_with_network_none(daemon: RunningDaemon, params: dict[str, Any]) -> None:
    outcome = run_in_job(daemon, ["raw_socket"], params, "--network", "none")["raw_socket"]
    assert not outcome["ok"] and outcome["errno"] == EPERM, outcome


@pytest.mark.host_probe
def test_raw_socket_works_on_the_host(params: dict[str, Any], tmp_path: Path) -> None:
    outcome = run_on_host(["raw_socket"], params, scratch=tmp_path)["raw_socket"]
    assert outcome["ok"], outcome


def test_network_none_job_has_only_loopback(daemon: RunningDaemon) -> None:
    done = daemon.cli("run", "--network", "none", "--", "ls", "/sys/class/net")
    assert done.returncode == 0 and done.stdout.split() == [b"lo"], done


@pytest.fixture
def setuid_id() -> Iterator[Path]:
    """A setuid-root copy of `id` in a directory every user can enter, on the host's root filesystem."""
    directory = Path(tempfile.mkdtemp(prefix="capsa-setuid-", dir="/var/tmp"))
    try:
        directory.chmod(0o755)
        binary = directory / "id"
        shutil.copy2(shutil.which("id") or "/usr/bin/id", binary)
        os.chown(binary, 0, 0)
        binary.chmod(0o4755)
        yield binary
    finally:
        shutil.rmtree(directory)


@pytest.mark.host_probe
def test_setuid_binary_gains_root_on_the_host(setuid_id: Path, tmp_path: Path) -> None:
    outcome = run_on_host(["setuid_binary"], {"setuid_binary": str(setuid_id)}, scratch=tmp_path,
                          user=65534)["setuid_binary"]
    assert outcome["ok"] and outcome["value"]["euid"] == "0", outcome


def test_setuid_binary_gains_nothing_in_a_job(daemon: RunningDaemon, setuid_id: Path) -> None:
    request = json.dumps({"probes": ["setuid_binary"], "params": {"scratch": "/tmp/probe",
                                                                   "setuid_binary": "/work/id"}, "host": False})
    from security_helpers import PROBE_SOURCE

    with daemon.client() as client:
        job = client.run_job(["python3", "-c", PROBE_SOURCE, request], user="65534")
        work = daemon.home / "jobs" / job.id / "work"
        staged = work / ".id.tmp"
        shutil.copy2(setuid_id, staged)     # placed from the host: the job itself cannot make a root-owned file
        os.chown(staged, 0, 0)
        staged.chmod(0o4755)
        os.rename(staged, work / "id")
        deadline = time.monotonic() + 30
        while not client.get_job(job.id).ended and time.monotonic() < deadline:
            time.sleep(0.05)
        out = b"".join(c.data for c in client.stream_logs(job.id) if c.stream == 1)
        err = b"".join(c.data for c in client.stream_logs(job.id) if c.stream == 2)
    report = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {}
    outcome = report.get("setuid_binary", {})
    assert outcome, f"no report: {out!r} {err!r}"
    value = outcome["value"]
    assert value["setuid_bit"] and value["owner"] == 0          # the attack was set up for real
    assert not outcome["ok"] and value["euid"] == "65534" and value["uid"] == 65534, outcome
    assert value["no_new_privs"] == "1"


def test_job_dev_is_the_minimal_set(daemon: RunningDaemon) -> None:
    done = daemon.cli("run", "--", "python3", "-c", "import os,json;print(json.dumps(sorted(os.listdir('/dev'))))")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == sorted(
        ["null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm", "stdin", "stdout", "stderr", "fd"])


def test_job_cgroup_view_is_mounted_read_only(daemon: RunningDaemon) -> None:
    view = job_cgroup_view("pids")
    code = ("import os\n"
            f"st = os.statvfs({view!r}); print('ro' if st.f_flag & os.ST_RDONLY else 'rw')\n"
            "print(sorted(p for p in open('/proc/self/mountinfo').read().split() if p.startswith('/sys/fs/cgroup')))\n")
    done = daemon.cli("run", "--max-pids", "9", "--", "python3", "-c", code)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0] == "ro"
    assert view in lines[1]


def test_device_nodes_outside_the_minimal_set_are_absent(daemon: RunningDaemon) -> None:
    code = ("import os\n"
            "for p in ('/dev/kmsg', '/dev/mem', '/dev/vda', '/dev/sda', '/dev/loop0', '/dev/fuse', '/dev/block'):\n"
            "    print(p, os.path.exists(p))\n")
    done = daemon.cli("run", "--", "python3", "-c", code)
    assert done.returncode == 0 and b"True" not in done.stdout and done.stdout.count(b"False") == 7, done.stdout


def test_without_the_filter_the_attacks_only_seccomp_stops_go_through(daemon: RunningDaemon,
                                                                       params: dict[str, Any]) -> None:
    """Attribution: with --seccomp unconfined (capabilities still dropped) exactly these attempts reach
    the kernel and work, so the batch above would fail if the filter were missing."""
    report = run_in_job(daemon, ["userns", "ptrace", "keyctl", "personality", "kexec_load", "init_module",
                                 "mount", "bpf"], params, "--seccomp", "unconfined")
    assert all(report[name]["ok"] for name in ("userns", "ptrace", "keyctl", "personality")), report
    assert report["kexec_load"]["errno"] == report["init_module"]["errno"] == ENOSYS   # reached the kernel
    assert report["mount"]["errno"] == report["bpf"]["errno"] == EPERM   # still no CAP_SYS_ADMIN / CAP_BPF
