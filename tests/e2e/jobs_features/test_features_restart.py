"""Restart policies with a real daemon: on-failure:N, always ended by `capsa stop`, kept across a daemon kill -9."""

from __future__ import annotations

import time

from features_helpers import inspect

from tests.fixtures.daemon import RunningDaemon
from tests.fixtures.waiting import wait_for


def _run(daemon: RunningDaemon, *args: str) -> str:
    return daemon.cli("run", "-d", *args, check=True).stdout.decode().strip()


def _settled(daemon: RunningDaemon, job_id: str, count: int, timeout: float = 20.0) -> dict:
    """The job ended with ``count`` restarts and no restart due."""
    return wait_for(lambda: (info := inspect(daemon, job_id))["ended"] and info.get("restart_count", 0) == count
                    and not info.get("next_restart_at_ns") and info, timeout=timeout,
                    what=f"job {job_id[:12]} to settle after {count} restarts")


def test_on_failure_3_runs_four_times_then_stays_failed(features_daemon: RunningDaemon) -> None:
    job_id = _run(features_daemon, "--restart", "on-failure:3", "--", "sh", "-c", "echo run; exit 1")
    info = _settled(features_daemon, job_id, 3)
    assert info["state"] == "FAILED" and info["exit_code"] == 1 and info["restart_policy"] == "on-failure:3"
    time.sleep(0.5)
    assert inspect(features_daemon, job_id)["restart_count"] == 3   # the limit holds
    logs = features_daemon.cli("logs", job_id, check=True)
    assert logs.stdout == b"run\n" * 4                               # one log, appended by every run
    assert logs.stderr.count(b"capsa: restart ") == 3 and b"restart 3 (policy on-failure)" in logs.stderr
    table = features_daemon.cli("ps", "-a", check=True).stdout.decode().splitlines()
    assert "RESTARTS" in table[0] and any(line.startswith(job_id[:12]) and " 3 " in line for line in table)


def test_always_is_ended_by_stop(features_daemon: RunningDaemon) -> None:
    job_id = _run(features_daemon, "--restart", "always", "--", "sh", "-c", "sleep 0.2")
    wait_for(lambda: inspect(features_daemon, job_id).get("restart_count", 0) >= 2, timeout=20,
             what="two restarts of an always job")
    features_daemon.cli("stop", job_id, check=True)
    stopped = inspect(features_daemon, job_id)
    assert stopped["ended"] and not stopped.get("next_restart_at_ns")
    time.sleep(1.5)   # longer than any backoff so far: a restart would have happened
    after = inspect(features_daemon, job_id)
    assert after["ended"] and after["restart_count"] == stopped["restart_count"]


def test_a_restart_policy_survives_a_daemon_kill9(fresh_features_daemon: RunningDaemon) -> None:
    d = fresh_features_daemon
    job_id = _run(d, "--restart", "on-failure:2", "--", "sh", "-c", "sleep 1; exit 2")
    d.kill9()     # the job's run ends while no daemon listens: the restarted daemon decides on it
    time.sleep(1.5)
    d.start()
    info = _settled(d, job_id, 2, timeout=30)
    assert info["state"] == "FAILED" and info["exit_code"] == 2 and info["restart_policy"] == "on-failure:2"
