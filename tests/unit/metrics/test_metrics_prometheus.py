"""The Prometheus endpoint serves job series (labels job_id, name), jobs by state and host gauges over HTTP."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from capsa.metrics import HostReader, MetricsSampler, PrometheusEndpoint
from capsa.runtime.cgroups import CgroupStats

JOB = "f" * 32


class _Cgroup:
    def stats(self) -> CgroupStats:
        return CgroupStats(cpu_usage_ns=2_500_000_000, cpu_nr_periods=None, cpu_nr_throttled=None,
                           cpu_throttled_ns=None, memory_current=1 << 20, memory_peak=2 << 20, oom_kills=0,
                           pids_current=4, pids_denied=0, io_read_bytes=None, io_write_bytes=7)


def test_the_endpoint_serves_job_host_and_state_metrics(tmp_path: Path) -> None:
    counts = {"RUNNING": 1, "COMPLETED": 2}
    sampler = MetricsSampler(None, lambda: [(JOB, "web")], host=HostReader(tmp_path),
                             open_cgroup=lambda _job: _Cgroup())
    sampler.sample_once()
    endpoint = PrometheusEndpoint("127.0.0.1:0", sampler, lambda: dict(counts))
    endpoint.start()
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=5).read().decode()
        assert f'capsa_job_cpu_seconds_total{{job_id="{JOB}",name="web"}} 2.5' in text
        assert f'capsa_job_memory_bytes{{job_id="{JOB}",name="web"}} 1.048576e+06' in text
        assert f'capsa_job_pids{{job_id="{JOB}",name="web"}} 4.0' in text
        assert f'capsa_job_io_write_bytes_total{{job_id="{JOB}",name="web"}} 7.0' in text
        assert "capsa_job_io_read_bytes_total{" not in text       # not reported: no series, not a zero
        assert 'capsa_jobs{state="COMPLETED"} 2.0' in text
        assert "capsa_host_memory_total_bytes" in text
        # A state that drops to zero still reports 0 instead of vanishing.
        counts.pop("COMPLETED")
        text = urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=5).read().decode()
        assert 'capsa_jobs{state="COMPLETED"} 0.0' in text
    finally:
        endpoint.close()
