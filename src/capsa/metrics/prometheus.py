"""The opt-in Prometheus endpoint: job and host samples, jobs by state, and RPC counts and latencies.

Everything is served from a registry of our own (never prometheus_client's global
one), so two daemons in one process, as in tests, never collide. Job series carry
the labels ``job_id`` and ``name``; they are built at scrape time from the
sampler's latest samples, so a job's series disappear when it stops running.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from capsa.config import parse_address
from capsa.metrics.sampler import MetricsSampler

__all__ = ["PipelineCollector", "PipelineStats", "PrometheusEndpoint", "RpcMetricsInterceptor"]

# (metric name, help, JobSample field, scale, counter?)
_JOB_SERIES: tuple[tuple[str, str, str, float, bool], ...] = (
    ("capsa_job_cpu_seconds", "CPU time used by the job's cgroup", "cpu_usage_ns", 1e-9, True),
    ("capsa_job_cpu_percent", "CPU use since the previous sample, in percent of one core", "cpu_percent", 1, False),
    ("capsa_job_memory_bytes", "Memory charged to the job's cgroup now", "memory_current", 1, False),
    ("capsa_job_memory_peak_bytes", "Highest memory charged to the job's cgroup", "memory_peak", 1, False),
    ("capsa_job_io_read_bytes", "Bytes read from block devices", "io_read_bytes", 1, True),
    ("capsa_job_io_write_bytes", "Bytes written to block devices", "io_write_bytes", 1, True),
    ("capsa_job_pids", "Processes and threads in the job", "pids", 1, False),
    ("capsa_job_network_receive_bytes", "Bytes received in the job's network namespace", "net_rx_bytes", 1, True),
    ("capsa_job_network_transmit_bytes", "Bytes sent from the job's network namespace", "net_tx_bytes", 1, True),
    ("capsa_job_oom_kills", "Processes of the job killed by the OOM killer", "oom_kills", 1, True),
)


class _Collector:
    def __init__(self, sampler: MetricsSampler, job_counts: Callable[[], dict[str, int]]) -> None:
        self.sampler = sampler
        self.job_counts = job_counts
        self._states_seen: set[str] = set()

    def describe(self) -> list[Metric]:
        return []   # series are dynamic; an empty describe keeps registration from scraping

    def collect(self) -> Iterator[Metric]:
        samples = self.sampler.running_latest()
        for name, help_text, attr, scale, counter in _JOB_SERIES:
            family: Any = (CounterMetricFamily if counter else GaugeMetricFamily)(
                name, help_text, labels=["job_id", "name"])
            for s in samples:
                value = getattr(s, attr)
                if value is not None:
                    family.add_metric([s.job_id, s.name], value * scale)
            yield family
        counts = self.job_counts()
        self._states_seen.update(counts)
        jobs = GaugeMetricFamily("capsa_jobs", "Jobs known to the daemon, by state", labels=["state"])
        for state in sorted(self._states_seen):
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily("capsa_jobs_sampled", "Running jobs with a current sample", value=len(samples))
        host = self.sampler.host_latest()
        if host is not None:
            for name, help_text, value in (
                ("capsa_host_cpu_percent", "Host CPU use, all CPUs together", host.cpu_percent),
                ("capsa_host_memory_total_bytes", "Host memory", host.memory_total),
                ("capsa_host_memory_available_bytes", "Host memory available", host.memory_available),
                ("capsa_host_disk_total_bytes", "Size of the filesystem holding CAPSA_HOME", host.disk_total),
                ("capsa_host_disk_free_bytes", "Free space on the filesystem holding CAPSA_HOME", host.disk_free),
            ):
                yield GaugeMetricFamily(name, help_text, value=value)


_DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800)


class _Hist:
    def __init__(self) -> None:
        self.buckets = [0] * len(_DURATION_BUCKETS)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(_DURATION_BUCKETS):
            if value <= bound:
                self.buckets[i] += 1
                break

    def family(self, name: str, help_text: str) -> Metric:
        from prometheus_client.core import HistogramMetricFamily

        cumulative, total = [], 0
        for bound, n in zip(_DURATION_BUCKETS, self.buckets, strict=True):
            total += n
            cumulative.append((str(bound), total))
        cumulative.append(("+Inf", self.count))
        return HistogramMetricFamily(name, help_text, buckets=cumulative, sum_value=self.sum)


class PipelineStats:
    """What the image pipeline reports (the ``observer`` of ``images.pull.PullContext``).

    Plain thread-safe counters, created before the endpoint (the image service is built
    first) and read by :class:`PipelineCollector` at scrape time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pull = _Hist()
        self.unpack = _Hist()
        self.refusals_by_class: dict[str, int] = {}
        self.refusals_by_limit: dict[str, int] = {}

    def pull_seconds(self, seconds: float) -> None:
        with self._lock:
            self.pull.observe(seconds)

    def unpack_seconds(self, seconds: float) -> None:
        with self._lock:
            self.unpack.observe(seconds)

    def unpack_refused(self, error_class: str, limit: str) -> None:
        with self._lock:
            self.refusals_by_class[error_class] = self.refusals_by_class.get(error_class, 0) + 1
            if limit:
                self.refusals_by_limit[limit] = self.refusals_by_limit.get(limit, 0) + 1

    def limit_refused(self, limit: str) -> None:
        with self._lock:
            self.refusals_by_limit[limit] = self.refusals_by_limit.get(limit, 0) + 1


class PipelineCollector:
    """Queues, state-machine runs and the image pipeline, built at scrape time.

    ``engine`` is the daemon's ``capsa.fsm.Engine`` (anything with ``queue_stats()`` and
    ``run_counts()``).
    """

    def __init__(self, engine: Any, stats: PipelineStats) -> None:
        self.engine = engine
        self.stats = stats

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import HistogramMetricFamily

        from capsa.fsm.queues import WAIT_BUCKETS

        depth = GaugeMetricFamily("capsa_queue_depth", "Runs waiting for a worker of the queue", labels=["queue"])
        flight = GaugeMetricFamily("capsa_queue_in_flight", "Runs holding a worker of the queue", labels=["queue"])
        limit = GaugeMetricFamily("capsa_queue_limit", "Concurrency limit of the queue", labels=["queue"])
        waited = HistogramMetricFamily("capsa_queue_wait_seconds", "Time runs waited in the queue for a worker",
                                       labels=["queue"])
        for q in self.engine.queue_stats():
            depth.add_metric([q.name], q.depth)
            flight.add_metric([q.name], q.in_flight)
            limit.add_metric([q.name], q.limit)
            buckets = [(str(b), n) for b, n in zip(WAIT_BUCKETS, q.waited_buckets, strict=True)]
            waited.add_metric([q.name], buckets + [("+Inf", q.waited_count)], q.waited_sum_s)
        yield from (depth, flight, limit, waited)
        runs = GaugeMetricFamily("capsa_fsm_runs", "State-machine runs recorded, by machine and state",
                                 labels=["machine", "state"])
        for (machine, state), n in sorted(self.engine.run_counts().items()):
            runs.add_metric([machine, state], n)
        yield runs
        with self.stats._lock:
            yield self.stats.pull.family("capsa_image_pull_duration_seconds", "Image pulls, start to ready rootfs")
            yield self.stats.unpack.family("capsa_layer_unpack_duration_seconds",
                                           "Layer unpacks, layout verification included")
            by_class = CounterMetricFamily("capsa_unpack_refusals", "Layers refused while unpacking, by class",
                                           labels=["class"])
            for name, n in sorted(self.stats.refusals_by_class.items()):
                by_class.add_metric([name], n)
            by_limit = CounterMetricFamily("capsa_limit_refusals", "Work refused by a configured limit, by limit",
                                           labels=["limit"])
            for name, n in sorted(self.stats.refusals_by_limit.items()):
                by_limit.add_metric([name], n)
        yield by_class
        yield by_limit


def _code(context: Any) -> str | None:
    try:
        code = context.code()
    except Exception:
        return None
    return code.name if isinstance(code, grpc.StatusCode) else None


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every RPC by method and status and times it (streams: until the last message).

    An interceptor of the daemon's grpc.aio server: a sync behaviour (run in the thread pool) gets a
    sync wrapper, an async one an async wrapper, so each keeps the kind grpc dispatches on.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter("capsa_rpc_requests", "RPCs handled, by method and status code",
                             ["method", "code"], registry=registry)
        self.latency = Histogram("capsa_rpc_duration_seconds", "Time spent handling RPCs", ["method"],
                                 registry=registry,
                                 buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300))

    def _record(self, method: str, code: str, started: float) -> None:
        self.calls.labels(method, code).inc()
        self.latency.labels(method).observe(time.perf_counter() - started)

    async def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit(".", 1)[-1]   # "JobService/RunJob"
        for kind, make, streaming in (
            ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
            ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
            ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
            ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
        ):
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                if inspect.isasyncgenfunction(behaviour):
                    wrapped = self._async_streaming(method, behaviour)
                elif inspect.iscoroutinefunction(behaviour):
                    wrapped = self._async_unary(method, behaviour)
                else:
                    wrapped = self._streaming(method, behaviour) if streaming else self._unary(method, behaviour)
                return make(wrapped, handler.request_deserializer, handler.response_serializer)
        return handler

    def _unary(self, method: str, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        def timed(request: Any, context: Any) -> Any:
            started, failed = time.perf_counter(), False
            try:
                return behaviour(request, context)
            except BaseException:
                failed = True
                raise
            finally:
                self._record(method, _code(context) or ("UNKNOWN" if failed else "OK"), started)
        return timed

    def _async_unary(self, method: str, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def timed(request: Any, context: Any) -> Any:
            started, failed = time.perf_counter(), False
            try:
                return await behaviour(request, context)
            except BaseException:
                failed = True
                raise
            finally:
                self._record(method, _code(context) or ("UNKNOWN" if failed else "OK"), started)
        return timed

    def _streaming(self, method: str, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        def timed(request: Any, context: Any) -> Iterator[Any]:
            started, outcome = time.perf_counter(), "OK"
            try:
                yield from behaviour(request, context)
            except GeneratorExit:
                outcome = "CANCELLED"
                raise
            except BaseException:
                outcome = "UNKNOWN"
                raise
            finally:
                self._record(method, _code(context) or outcome, started)
        return timed

    def _async_streaming(self, method: str, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def timed(request: Any, context: Any) -> AsyncIterator[Any]:
            started, outcome = time.perf_counter(), "OK"
            try:
                async for item in behaviour(request, context):
                    yield item
            except (GeneratorExit, asyncio.CancelledError):
                outcome = "CANCELLED"
                raise
            except BaseException:
                outcome = "UNKNOWN"
                raise
            finally:
                self._record(method, _code(context) or outcome, started)
        return timed


class PrometheusEndpoint:
    """``/metrics`` over HTTP on ``listen`` (host:port); create before the gRPC server, start after."""

    def __init__(self, listen: str, sampler: MetricsSampler, job_counts: Callable[[], dict[str, int]],
                 pipeline: PipelineCollector | None = None) -> None:
        self.host, self.port = parse_address(listen, allow_port_zero=True)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(sampler, job_counts))  # type: ignore[arg-type]
        if pipeline is not None:
            self.registry.register(pipeline)  # type: ignore[arg-type]
        self.interceptor = RpcMetricsInterceptor(self.registry)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        self.port = int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
