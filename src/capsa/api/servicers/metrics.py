"""MetricsService servicer: job samples and node stats from capsa.metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from capsa.api.gen.capsa.v1 import metrics_pb2 as pb
from capsa.api.gen.capsa.v1 import metrics_pb2_grpc as pb_grpc
from capsa.api.servicers._base import rpc
from capsa.api.streams import follow_metrics
from capsa.errors import Unavailable
from capsa.jobs.service import JobService
from capsa.metrics import JobSample, MetricsSampler

__all__ = ["MetricsServicer", "sample_to_pb"]

_OPTIONAL = {
    "cpu_usage_ns": "cpu_usage_ns", "cpu_percent": "cpu_percent", "memory_current": "memory_current_bytes",
    "memory_peak": "memory_peak_bytes", "io_read_bytes": "io_read_bytes", "io_write_bytes": "io_write_bytes",
    "pids": "pids", "net_rx_bytes": "net_rx_bytes", "net_tx_bytes": "net_tx_bytes",
    "cpu_throttled_ns": "cpu_throttled_ns", "oom_kills": "oom_kills",
}


def sample_to_pb(s: JobSample) -> pb.JobMetrics:
    present = {wire: getattr(s, attr) for attr, wire in _OPTIONAL.items() if getattr(s, attr) is not None}
    return pb.JobMetrics(job_id=s.job_id, name=s.name, timestamp_ns=s.timestamp_ns, **present)


class MetricsServicer(pb_grpc.MetricsServiceServicer):
    def __init__(self, sampler: MetricsSampler, jobs: JobService) -> None:
        self.sampler = sampler
        self.jobs = jobs

    @rpc
    async def MetricsStream(self, request: pb.MetricsStreamRequest, context: Any) -> Any:
        loop = asyncio.get_running_loop()
        job_id = (await loop.run_in_executor(None, self.jobs.get, request.id)).id
        async for sample in follow_metrics(self.sampler, job_id, follow=request.follow, history=request.history,
                                           ended=lambda: self.jobs.get(job_id).state.ended):
            yield sample_to_pb(sample)

    @rpc
    def GetNodeStats(self, request: Any, context: grpc.ServicerContext) -> pb.NodeStats:
        host = self.sampler.host_latest()
        if host is None:
            raise Unavailable("host statistics are not available on this daemon")
        return pb.NodeStats(
            timestamp_ns=host.timestamp_ns, cpu_percent=host.cpu_percent, cpu_count=host.cpu_count,
            memory_total_bytes=host.memory_total, memory_available_bytes=host.memory_available,
            disk_path=host.disk_path, disk_total_bytes=host.disk_total, disk_free_bytes=host.disk_free,
            load1=host.load1, load5=host.load5, load15=host.load15, uptime_seconds=host.uptime_s,
            jobs=[sample_to_pb(s) for s in self.sampler.running_latest()],
        )
