"""Resource limits as escape probes: what a job cannot take (memory, processes, CPU) works on the host.

The job measures itself: its CPU throttling is read through its own read-only cgroup view
(/sys/fs/cgroup/cpu/cpu.stat), which exists only because capsa mounts it for the job.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from security_helpers import JOB_SCRATCH, PROBE_SOURCE, job_cgroup_view, run_in_job, run_on_host

from tests.fixtures.daemon import RunningDaemon

HOG_MB = 200          # well above the job's 64 MiB, well below this host's free memory
FORKS = 40            # bounded: a missing limit cannot hurt the host
PIDS_LIMIT = 16
SPIN = {"seconds": 1.5, "share": 0.2}   # a busy loop gets >= 20 % of a CPU unless throttled


def test_memory_hog_is_oom_killed_in_a_job(daemon: RunningDaemon) -> None:
    request = json.dumps({"probes": ["memory_hog"], "params": {"scratch": JOB_SCRATCH, "hog_mb": HOG_MB},
                          "host": False})
    done = daemon.cli("run", "--max-memory", "64", "--", "python3", "-c", PROBE_SOURCE, request)
    assert done.returncode == 137, done.stderr
    assert done.stdout == b""   # killed before it could report
    job_id = daemon.cli("ps", "-a", "-q", check=True).stdout.split()[0].decode()
    info = json.loads(daemon.cli("inspect", job_id, check=True).stdout)
    assert info["reason"] == "OOM killed" and info["state"] == "FAILED"


@pytest.mark.host_probe
def test_memory_hog_works_on_the_host(tmp_path: Path) -> None:
    outcome = run_on_host(["memory_hog"], {"hog_mb": HOG_MB}, scratch=tmp_path)["memory_hog"]
    assert outcome["ok"] and outcome["value"] == HOG_MB << 20, outcome


def test_fork_bomb_stops_at_max_pids_in_a_job(daemon: RunningDaemon) -> None:
    outcome = run_in_job(daemon, ["fork_bomb"], {"forks": FORKS}, "--max-pids", str(PIDS_LIMIT))["fork_bomb"]
    assert not outcome["ok"] and outcome["errno"] == 11, outcome   # EAGAIN from the pids controller
    assert PIDS_LIMIT - 4 <= outcome["value"] < PIDS_LIMIT, outcome


@pytest.mark.host_probe
def test_fork_bomb_forks_them_all_on_the_host(tmp_path: Path) -> None:
    outcome = run_on_host(["fork_bomb"], {"forks": FORKS}, scratch=tmp_path)["fork_bomb"]
    assert outcome["ok"] and outcome["value"] == FORKS, outcome


def test_cpu_spinner_is_throttled_to_max_cpu_in_a_job(daemon: RunningDaemon) -> None:
    cpu_stat = f"{job_cgroup_view('cpu')}/cpu.stat"
    outcome = run_in_job(daemon, ["cpu_spin"], {**SPIN, "cpu_stat": cpu_stat}, "--max-cpu", "10")["cpu_spin"]
    assert not outcome["ok"], f"a job limited to 10 % of a CPU got {outcome['value']['share']:.0%}"
    assert outcome["value"]["throttled"] and outcome["value"]["throttled"] > 0, outcome


@pytest.mark.host_probe
def test_cpu_spinner_gets_its_cpu_on_the_host(tmp_path: Path) -> None:
    outcome = run_on_host(["cpu_spin"], SPIN, scratch=tmp_path)["cpu_spin"]
    assert outcome["ok"], f"the host gave the spinner only {outcome['value']['share']:.0%} of a CPU"
