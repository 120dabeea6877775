"""`capsa stats` / MetricsStream from the job's real cgroup, `capsa top` for the node, and the Prometheus
endpoint with job and daemon metrics."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator

import pytest
from features_helpers import wait_for, wait_state

from tests.fixtures.daemon import CAPSA, RunningDaemon

BUSY = "while :; do :; done"


@pytest.fixture(scope="module")
def busy_job(features_daemon: RunningDaemon) -> Iterator[str]:
    """A job burning CPU (and holding some memory) for the tests of this module."""
    with features_daemon.client() as client:
        job = client.run_job(["/bin/sh", "-c", f"x=$(head -c 2000000 /dev/zero | tr '\\0' a); {BUSY}"],
                             name="burner")
        yield job.id
        client.stop_job(job.id, grace_seconds=0.2)


def test_stats_of_a_busy_job_show_cpu_and_memory(features_daemon: RunningDaemon, busy_job: str) -> None:
    def sampled() -> dict | None:
        result = features_daemon.cli("stats", "--json", busy_job, role="reader")
        data = json.loads(result.stdout) if result.returncode == 0 else None
        # a busy loop, not idling: on a loaded 2-core host one sample may still show it starved
        return data if data and (data["cpu_percent"] or 0) > 10 else None

    data = wait_for(sampled, timeout=30, what="a sample with more than 10% CPU")
    assert data["job_id"] == busy_job and data["name"] == "burner"
    assert data["cpu_usage_ns"] > 0
    assert data["memory_current_bytes"] > 0 and data["memory_peak_bytes"] >= data["memory_current_bytes"]
    assert data["pids"] >= 1
    assert data["net_rx_bytes"] is None                               # host network: no netns counters
    table = features_daemon.cli("stats", busy_job, check=True).stdout.decode().splitlines()
    assert table[0].split()[:3] == ["TIME", "CPU%", "CPU-TIME"] and len(table) == 2


def test_follow_yields_a_stream_of_growing_samples(features_daemon: RunningDaemon, busy_job: str) -> None:
    cmd = [*CAPSA, "--config", str(features_daemon.home / "client-reader.yaml"), "stats", "--follow", "--json",
           busy_job]
    proc = subprocess.Popen(cmd, env=features_daemon.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        lines = [json.loads(proc.stdout.readline()) for _ in range(3)]
    finally:
        proc.kill()
        proc.wait()
    stamps = [s["timestamp_ns"] for s in lines]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3
    assert lines[-1]["cpu_usage_ns"] > lines[0]["cpu_usage_ns"]
    assert all(s["memory_current_bytes"] > 0 for s in lines)


def test_follow_ends_with_the_job_and_the_last_sample_is_kept(features_daemon: RunningDaemon) -> None:
    with features_daemon.client() as client:
        # Busy, then idle long enough for a few 0.2 s samples even on a fast, quiet machine.
        job = client.run_job(["/bin/sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 0.8"])
        samples = list(client.metrics_stream(job.id, follow=True))
        wait_state(features_daemon, job.id, "COMPLETED")
        assert samples and samples[-1].cpu_usage_ns > 0
        # After the job (and its cgroup) is gone, stats answers from the sample kept in SQLite.
        last = list(client.metrics_stream(job.id))
        assert len(last) == 1 and last[0].timestamp_ns >= samples[-1].timestamp_ns


def test_top_shows_the_host_and_the_running_jobs(features_daemon: RunningDaemon, busy_job: str) -> None:
    wait_for(lambda: busy_job in features_daemon.cli("top", "--json", role="reader").stdout.decode(),
             what="the busy job in top")
    node = json.loads(features_daemon.cli("top", "--json", check=True).stdout)
    assert node["cpu_count"] >= 1 and 0 <= node["cpu_percent"] <= 100
    assert node["memory_total_bytes"] > node["memory_available_bytes"] > 0
    assert node["disk_total_bytes"] >= node["disk_free_bytes"] > 0
    assert node["disk_path"] == str(features_daemon.home)
    burner = next(j for j in node["jobs"] if j["job_id"] == busy_job)
    assert burner["name"] == "burner" and burner["memory_current_bytes"] > 0
    text = features_daemon.cli("top", check=True).stdout.decode()
    assert "CPU" in text and "MEM" in text and busy_job[:12] in text


def test_prometheus_serves_job_and_daemon_metrics(features_daemon: RunningDaemon, busy_job: str) -> None:
    url = f"http://127.0.0.1:{features_daemon.prometheus_port}/metrics"  # type: ignore[attr-defined]

    def scrape() -> str | None:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        return text if f'capsa_job_cpu_seconds_total{{job_id="{busy_job}",name="burner"}}' in text else None

    text = wait_for(scrape, what="the busy job's series")
    assert f'capsa_job_memory_bytes{{job_id="{busy_job}",name="burner"}}' in text
    assert f'capsa_job_pids{{job_id="{busy_job}",name="burner"}}' in text
    assert 'capsa_jobs{state="RUNNING"}' in text
    assert 'capsa_rpc_requests_total{code="OK",method="JobService/RunJob"}' in text
    assert 'capsa_rpc_duration_seconds_count{method="JobService/RunJob"}' in text
    assert "capsa_host_cpu_percent" in text


def test_prometheus_serves_the_queues_and_state_machine_runs_of_the_daemon(features_daemon: RunningDaemon) -> None:
    # Wired in the composition root: the engine's queues and the image pipeline's counters.
    url = f"http://127.0.0.1:{features_daemon.prometheus_port}/metrics"  # type: ignore[attr-defined]
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'capsa_queue_limit{queue="download"}' in text and 'capsa_queue_limit{queue="unpack"}' in text
    assert 'capsa_queue_depth{queue="workflows"}' in text
    assert "capsa_queue_wait_seconds_bucket" in text
