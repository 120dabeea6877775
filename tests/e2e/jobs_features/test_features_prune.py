"""`capsa prune` with a real daemon: old ended jobs go with their files; recent and running ones stay."""

from __future__ import annotations

import json
import time

from features_helpers import inspect, wait_state

from tests.fixtures.daemon import RunningDaemon


def _run(daemon: RunningDaemon, *command: str) -> str:
    return daemon.cli("run", "-d", "--", *command, check=True).stdout.decode().strip()


def test_prune_removes_old_ended_jobs_and_their_files_only(features_daemon: RunningDaemon) -> None:
    d = features_daemon
    old = _run(d, "sh", "-c", "echo data > /work/file; echo out")
    wait_state(d, old, "COMPLETED")
    running = _run(d, "sleep", "30")
    time.sleep(4)
    recent = _run(d, "sh", "-c", "exit 3")
    wait_state(d, recent, "FAILED")
    assert (d.home / "jobs" / old / "work" / "file").exists()
    result = json.loads(d.cli("prune", "-f", "--older-than", "3s", "--json", role="maintainer", check=True).stdout)
    assert old in result["job_ids"] and recent not in result["job_ids"] and running not in result["job_ids"]
    assert result["bytes_freed"] > 0
    assert d.cli("inspect", old).returncode != 0 and not (d.home / "jobs" / old).exists()
    assert inspect(d, running)["state"] == "RUNNING" and inspect(d, recent)["state"] == "FAILED"
    refused = d.cli("prune", "--filter", "state=failed")                 # no tty, no -f: nothing happens
    assert refused.returncode != 0 and b"pass -f" in refused.stderr and inspect(d, recent)["state"] == "FAILED"
    assert d.cli("prune", "-f", role="developer").returncode == 6         # maintainers and above
    only_failed = json.loads(d.cli("prune", "-f", "--filter", "state=failed", "--json", check=True).stdout)
    assert recent in only_failed["job_ids"] and only_failed["fsm_runs_removed"] == 0
    assert d.cli("prune", "-f", "--filter", "state=running").returncode == 2   # live jobs are never pruned
    d.cli("stop", running, check=True)
