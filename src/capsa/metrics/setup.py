"""Wiring for the daemon: the sampler (always) and the Prometheus endpoint (when configured)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc.aio

from capsa.config import MetricsConfig
from capsa.metrics.host import HostReader
from capsa.metrics.prometheus import PipelineCollector, PrometheusEndpoint
from capsa.metrics.sampler import MetricsSampler, NetworkStats
from capsa.state import Database

__all__ = ["DaemonMetrics", "JobSource", "open_metrics"]

log = logging.getLogger("capsa.metrics")


class JobSource(Protocol):
    """What the metrics need of the job service (kept structural so metrics does not import jobs)."""

    def list(self, *, all: bool = False) -> Sequence[Any]: ...

    def running_names(self) -> list[tuple[str, str]]: ...

    def count_by_state(self) -> dict[str, int]: ...


@dataclass
class DaemonMetrics:
    sampler: MetricsSampler
    prometheus: PrometheusEndpoint | None

    @property
    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [self.prometheus.interceptor] if self.prometheus is not None else []

    def start(self) -> None:
        """Start the endpoint (after the gRPC server, so its interceptor is in place)."""
        if self.prometheus is not None:
            self.prometheus.start()
            log.info("prometheus metrics on http://%s:%d/metrics", self.prometheus.host, self.prometheus.port)

    def close(self) -> None:
        if self.prometheus is not None:
            self.prometheus.close()
        self.sampler.close()


def open_metrics(config: MetricsConfig, db: Database, home: Path, jobs: JobSource,
                 network_stats: NetworkStats | None = None, pipeline: PipelineCollector | None = None
                 ) -> DaemonMetrics:
    """Create and start the sampler; create (not yet start) the Prometheus endpoint if configured."""
    sampler = MetricsSampler(db, jobs.running_names, interval_s=config.sample_interval_s, history=config.history_samples,
                             host=HostReader(home), network_stats=network_stats)
    sampler.start()
    prometheus = None
    if config.prometheus_listen:
        prometheus = PrometheusEndpoint(config.prometheus_listen, sampler, jobs.count_by_state, pipeline=pipeline)
    return DaemonMetrics(sampler, prometheus)
