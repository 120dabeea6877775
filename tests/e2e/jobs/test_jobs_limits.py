"""Resource limits are enforced by the kernel, checked from the host: memory (OOM kill, 137),
pids (fork fails at the limit), CPU (throttled to the quota), cpuset (allowed CPUs)."""

from __future__ import annotations

import json
import os
import time

import pytest
from jobs_helpers import (
    host_cgroup_dir,
    proc_cpu_seconds,
    read_flat_keyed,
    stdout_of,
    wait_ended,
    wait_for,
    wait_running,
)

from tests.fixtures.daemon import RunningDaemon

HOG = "b = b'x' * (200 * 1024 * 1024); print(len(b))"


def test_memory_hog_is_oom_killed_with_137_and_reason(daemon: RunningDaemon) -> None:
    res = daemon.cli("run", "--max-memory", "64", "--", "python3", "-c", HOG)
    assert res.returncode == 137, res.stderr.decode()
    assert res.stdout == b""
    assert b"Traceback" not in res.stderr
    job_id = daemon.cli("ps", "-a", "-q", check=True).stdout.split()[0].decode()
    info = json.loads(daemon.cli("inspect", job_id, check=True).stdout)
    assert info["state"] == "FAILED"
    assert info["reason"] == "OOM killed"
    assert info["exit_code"] == 137 and info["signal"] == 9
    assert int(info["resources"]["max_memory_mb"]) == 64


def test_memory_hog_runs_without_the_limit(daemon: RunningDaemon) -> None:
    """Control for the test above: the same allocation succeeds when no limit is set."""
    res = daemon.cli("run", "--", "python3", "-c", HOG)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == b"209715200\n"


# Forks (bounded, so a missing limit cannot hurt the host) until fork fails; children sleep.
FORKER = r"""
import json, os, sys, time
children, error = [], None
for _ in range(300):
    try:
        pid = os.fork()
    except OSError as exc:
        error = exc.errno
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    children.append(pid)
procs = sum(1 for p in os.listdir("/proc") if p.isdigit())
print(json.dumps({"forked": len(children), "errno": error, "procs": procs}), flush=True)
time.sleep(60)
"""


def test_fork_bomb_is_stopped_by_max_pids(daemon: RunningDaemon) -> None:
    limit = 16
    with daemon.client() as client:
        job = client.run_job(["python3", "-c", FORKER], max_pids=limit)
        running = wait_running(client, job.id)
        line = wait_for(
            lambda: b"".join(c.data for c in client.stream_logs(job.id) if c.stream == 1),
            what="the forker's report",
        )
        report = json.loads(line)
        pids_dir = host_cgroup_dir(running.pid, "pids")
        current = int((pids_dir / "pids.current").read_text())
        maximum = (pids_dir / "pids.max").read_text().strip()
        events = read_flat_keyed(pids_dir / "pids.events") if (pids_dir / "pids.events").exists() else {}
        client.stop_job(job.id, grace_seconds=0.1)
        final = wait_ended(client, job.id)
    assert report["errno"] == 11, f"fork never failed: {report}"  # EAGAIN from the pids controller
    assert report["forked"] + 1 <= limit and report["procs"] <= limit, report
    assert report["forked"] >= limit - 4, f"fork failed far below the limit: {report}"
    assert maximum == str(limit)
    assert current <= limit
    assert events.get("max", 1) > 0
    assert final.state == "STOPPED"
    assert not pids_dir.exists(), "the job's cgroup was not removed when it ended"


BUSY = "import time\nend = time.monotonic() + 3\nwhile time.monotonic() < end: pass"


def test_max_cpu_throttles_the_job(daemon: RunningDaemon) -> None:
    with daemon.client() as client:
        limited = client.run_job(["python3", "-c", BUSY], max_cpu=20)
        lim = wait_running(client, limited.id)
        cpu_dir = host_cgroup_dir(lim.pid, "cpu")
        t0 = time.monotonic()
        c0 = proc_cpu_seconds(lim.pid)
        time.sleep(1.5)
        elapsed = time.monotonic() - t0
        used = proc_cpu_seconds(lim.pid) - c0
        stat = read_flat_keyed(cpu_dir / "cpu.stat")
        quota = (
            (cpu_dir / "cpu.cfs_quota_us").read_text().strip()
            if (cpu_dir / "cpu.cfs_quota_us").exists()
            else (cpu_dir / "cpu.max").read_text().split()[0]
        )
        assert wait_ended(client, limited.id).exit_code == 0
    assert stat["nr_throttled"] > 0, stat
    assert int(quota) == 20000  # 20 % of a 100 ms period
    assert stat.get("throttled_time", stat.get("throttled_usec", 0)) > 0, stat
    # A busy loop wants 100 % of a CPU; the quota allows 20 % (some slack for the measurement).
    assert used / elapsed <= 0.30, f"limited job used {used / elapsed:.0%} of a CPU"
    assert not cpu_dir.exists(), "the job's cgroup was not removed when it ended"


@pytest.mark.parametrize("cores", ["0", "1"])
def test_cpu_cores_sets_the_allowed_cpus(daemon: RunningDaemon, cores: str) -> None:
    if int(cores) >= (os.cpu_count() or 1):
        pytest.skip(f"this host has no CPU {cores}")
    with daemon.client() as client:
        job = client.run_job(["grep", "Cpus_allowed_list", "/proc/self/status"], cpu_cores=cores)
        out = stdout_of(client, job.id)
    assert out.split() == [b"Cpus_allowed_list:", cores.encode()]
    assert os.sched_getaffinity(0) != {int(cores)}, "the test itself is pinned: the check would be vacuous"
