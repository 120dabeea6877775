"""Schedules (SCHEDULED, persisted, started by the daemon's timer, surviving kill -9), cancel, and timeouts
(state TIMEOUT, an attached run exits 124)."""

from __future__ import annotations

import hashlib
import time

import pytest
from features_helpers import inspect, wait_state

from capsa.errors import InvalidArgument
from tests.fixtures.daemon import RunningDaemon


def test_a_scheduled_job_waits_then_runs(features_daemon: RunningDaemon) -> None:
    submitted = time.time_ns()
    job_id = features_daemon.cli("run", "--schedule", "2s", "--name", "later", "--", "/bin/echo", "ran later",
                                 check=True).stdout.decode().strip()
    info = inspect(features_daemon, job_id)
    assert info["state"] == "SCHEDULED" and not info["ended"]
    assert submitted + 1.9e9 <= info["scheduled_at_ns"] <= time.time_ns() + 2.1e9
    assert job_id[:12].encode() in features_daemon.cli("ps", check=True).stdout   # listed while waiting
    final = wait_state(features_daemon, job_id, "COMPLETED", "FAILED", timeout=15)
    assert final["state"] == "COMPLETED", final
    assert final["started_at_ns"] >= info["scheduled_at_ns"]
    assert features_daemon.cli("logs", job_id, check=True).stdout == b"ran later\n"


def test_a_schedule_survives_a_daemon_kill9(fresh_features_daemon: RunningDaemon) -> None:
    d = fresh_features_daemon
    secret = "survives-restarts"
    job_id = d.cli("run", "--schedule", "3s", "--secret-env", f"TOKEN={secret}", "--", "/bin/sh", "-c",
                   'printf %s "$TOKEN" | sha256sum', check=True).stdout.decode().strip()
    d.kill9()
    time.sleep(0.5)
    d.start()
    assert inspect(d, job_id)["state"] in ("SCHEDULED", "PENDING", "RUNNING", "COMPLETED")
    final = wait_state(d, job_id, "COMPLETED", "FAILED", timeout=20)
    assert final["state"] == "COMPLETED", final
    assert d.cli("logs", job_id, check=True).stdout.decode().startswith(hashlib.sha256(secret.encode()).hexdigest())


def test_cancel_of_a_scheduled_job(features_daemon: RunningDaemon) -> None:
    job_id = features_daemon.cli("run", "--schedule", "1h", "--", "/bin/true", check=True).stdout.decode().strip()
    result = features_daemon.cli("cancel", job_id[:12], check=True)
    assert result.stdout.decode().strip() == job_id[:12]
    with features_daemon.client() as client:
        info = client.get_job(job_id)
        assert info.state == "CANCELED" and info.ended and info.reason == "canceled by user"
        assert job_id not in [j.id for j in client.list_jobs()]
        assert client.cancel_job(job_id).state == "CANCELED"       # idempotent
        done = client.run_job(["/bin/true"]).id
    wait_state(features_daemon, done, "COMPLETED")
    refused = features_daemon.cli("cancel", done)
    assert refused.returncode == 4 and b"only SCHEDULED or PENDING" in refused.stderr
    assert features_daemon.cli("cancel", job_id, role="reader").returncode == 6


def test_a_bad_schedule_or_timeout_is_a_clear_error(features_daemon: RunningDaemon) -> None:
    result = features_daemon.cli("run", "--timeout", "10", "--", "/bin/true")
    assert result.returncode == 2 and b"--timeout '10' has no unit: write 10s" in result.stderr, result.stderr
    with features_daemon.client() as client:
        for kwargs, message in (({"schedule": "soon"}, "not a duration"),
                                ({"schedule": "2001-01-01T00:00:00Z"}, "in the past")):
            with pytest.raises(InvalidArgument, match=message):
                client.run_job(["/bin/true"], **kwargs)


def test_a_timeout_stops_the_job_and_run_exits_124(features_daemon: RunningDaemon) -> None:
    started = time.monotonic()
    result = features_daemon.cli("run", "--json", "--timeout", "1s", "--", "/bin/sh", "-c",
                                 "trap 'exit 3' TERM; echo started; while :; do sleep 0.1; done")
    elapsed = time.monotonic() - started
    assert result.returncode == 124, result.stderr
    assert b"started" in result.stdout and b"timed out after 1s" in result.stderr
    assert 1.0 <= elapsed < 8, elapsed
    ps = features_daemon.cli("ps", "-a", "--json", check=True).stdout.decode()
    assert '"state": "TIMEOUT"' in ps


def test_a_job_ignoring_sigterm_is_killed_after_the_grace(features_daemon: RunningDaemon) -> None:
    # sleep as the job's PID 1 has no SIGTERM handler, so only the SIGKILL after the grace (2 s here) ends it.
    job_id = features_daemon.cli("run", "-d", "--timeout", "500ms", "--", "/bin/sleep", "60",
                                 check=True).stdout.decode().strip()
    final = wait_state(features_daemon, job_id, "TIMEOUT", "FAILED", "COMPLETED", timeout=15)
    assert final["state"] == "TIMEOUT" and final["timeout_seconds"] == 0.5
    assert final["signal"] == 9
    assert (final["ended_at_ns"] - final["started_at_ns"]) / 1e9 < 6
