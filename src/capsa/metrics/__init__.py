"""Job and node metrics: cgroup sampling in the daemon, per-job history, and a Prometheus endpoint.

Typical use by the daemon::

    metrics = open_metrics(config.metrics, db, home, jobs)   # sampler running
    server = grpc.aio.server(..., interceptors=[*metrics.interceptors, AuthInterceptor()])
    metrics.start()                                           # Prometheus, if configured
    for sample in metrics.sampler.stream(job_id, follow=True, ended=...): ...
"""

from capsa.metrics.host import HostReader, parse_cpu_line, parse_meminfo
from capsa.metrics.model import HostSample, JobSample
from capsa.metrics.prometheus import PrometheusEndpoint, RpcMetricsInterceptor
from capsa.metrics.sampler import MetricsSampler, NetworkStats, RunningJobs, net_counters
from capsa.metrics.setup import DaemonMetrics, JobSource, open_metrics

__all__ = [
    "DaemonMetrics",
    "HostReader",
    "HostSample",
    "JobSample",
    "JobSource",
    "MetricsSampler",
    "NetworkStats",
    "PrometheusEndpoint",
    "RpcMetricsInterceptor",
    "RunningJobs",
    "net_counters",
    "open_metrics",
    "parse_cpu_line",
    "parse_meminfo",
]
