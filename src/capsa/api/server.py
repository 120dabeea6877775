"""The daemon's gRPC surface: one grpc.aio server, its interceptors, and every servicer registered on it.

The server runs on an event loop in a thread of its own. Long-lived streams (log
and metrics follows) are async and hold no thread while they wait; unary calls
run in a bounded thread pool, which is also the loop's default executor for the
short blocking steps of streams; streams whose domain code must block (uploads,
pulls, builds) get a separate bounded pool. So no number of open streams can
starve a unary call of a thread (docs/adr/0011-api-streams-and-limits.md).

What the servicers serve is built by ``capsa.daemon.Daemon`` (the composition root).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent import futures
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from capsa.api.auth import AuthInterceptor
from capsa.api.gen.capsa.v1 import (
    capsules_pb2_grpc,
    cluster_pb2_grpc,
    events_pb2_grpc,
    files_pb2_grpc,
    housekeeping_pb2_grpc,
    images_pb2_grpc,
    interactive_pb2_grpc,
    jobs_pb2_grpc,
    metrics_pb2_grpc,
    networks_pb2_grpc,
    runtimes_pb2_grpc,
    workflows_pb2_grpc,
)
from capsa.api.limits import StreamLimits
from capsa.api.servicers.capsules import CapsuleServicer
from capsa.api.servicers.cluster import ClusterServicer
from capsa.api.servicers.events import EventServicer
from capsa.api.servicers.files import FileServicer
from capsa.api.servicers.housekeeping import HousekeepingServicer
from capsa.api.servicers.images import ImageServicer
from capsa.api.servicers.interactive import InteractiveServicer
from capsa.api.servicers.jobs import JobServicer, NodeServicer
from capsa.api.servicers.metrics import MetricsServicer
from capsa.api.servicers.networks import NetworkServicer, VolumeServicer
from capsa.api.servicers.runtimes import RuntimeServicer
from capsa.api.servicers.workflows import WorkflowServicer
from capsa.api.streams import BlockingStreams
from capsa.config import ApiConfig
from capsa.jobs.attach import JobAttach
from capsa.jobs.copying import JobFiles
from capsa.jobs.execs import JobExecs

if TYPE_CHECKING:
    from capsa.daemon import Daemon

__all__ = ["ApiServer", "build_server"]

# A request larger than this is refused by gRPC before it is decoded (RESOURCE_EXHAUSTED); the
# largest legitimate ones are 1 MiB workflow/runtime documents and 1 MiB upload chunks.
MAX_REQUEST_BYTES = 8 << 20


class ApiServer:
    """A grpc.aio server on its own event-loop thread, driven from synchronous code.

    ``start()`` binds and serves; ``stop(grace)`` returns an event that is set once every call has
    ended and the loop thread has exited (``stop(2).wait(5)``).
    """

    def __init__(self, daemon: Daemon, listen: str, *, cgroup_version: int, limits: ApiConfig) -> None:
        self.daemon = daemon
        self.listen = listen
        self.cgroup_version = cgroup_version
        self.limits = limits
        self.streams = StreamLimits(total=limits.max_streams, per_client=limits.max_streams_per_client)
        self.pool = futures.ThreadPoolExecutor(max_workers=limits.unary_threads, thread_name_prefix="rpc")
        _prestart(self.pool, limits.unary_threads)
        self.blocking = BlockingStreams(limits.blocking_stream_threads)
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(self.pool)
        self._thread = threading.Thread(target=self._run_loop, name="rpc-loop", daemon=True)
        self._server: grpc.aio.Server | None = None
        self._stopped = threading.Event()
        self._thread.start()
        # grpc.aio binds a server to the loop that creates it: build (and bind) it there.
        try:
            self._call(self._build())
        except BaseException:
            self._shutdown_loop()
            raise

    def _shutdown_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.blocking.shutdown()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _call(self, coro: Any, timeout: float | None = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _build(self) -> None:
        daemon = self.daemon
        server = grpc.aio.server(
            migration_thread_pool=self.pool,
            interceptors=[*daemon.metrics.interceptors, AuthInterceptor(self.streams)],
            options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES), ("grpc.so_reuseport", 0)],
        )
        blocking = self.blocking
        execs = JobExecs(daemon.jobs)
        jobs_pb2_grpc.add_JobServiceServicer_to_server(
            JobServicer(daemon.jobs, blocking, execs, published=daemon.networks.published), server)
        interactive_pb2_grpc.add_InteractiveServiceServicer_to_server(
            InteractiveServicer(execs, blocking, JobAttach(daemon.jobs)), server)
        files_pb2_grpc.add_FileServiceServicer_to_server(FileServicer(JobFiles(daemon.jobs, daemon.fd_broker), blocking), server)
        images_pb2_grpc.add_ImageServiceServicer_to_server(ImageServicer(daemon.images, blocking), server)
        workflows_pb2_grpc.add_WorkflowServiceServicer_to_server(WorkflowServicer(daemon.workflows), server)
        metrics_pb2_grpc.add_MetricsServiceServicer_to_server(
            MetricsServicer(daemon.metrics.sampler, daemon.jobs), server)
        networks_pb2_grpc.add_NetworkServiceServicer_to_server(NetworkServicer(daemon.networks), server)
        runtimes_pb2_grpc.add_RuntimeServiceServicer_to_server(RuntimeServicer(daemon.runtimes, blocking), server)
        networks_pb2_grpc.add_VolumeServiceServicer_to_server(VolumeServicer(daemon.volumes), server)
        capsules_pb2_grpc.add_CapsuleServiceServicer_to_server(CapsuleServicer(
            daemon.capsule_store, daemon.capsules, daemon.capsule_distribution, blocking), server)
        housekeeping_pb2_grpc.add_HousekeepingServiceServicer_to_server(
            HousekeepingServicer(daemon.housekeeper), server)
        events_pb2_grpc.add_EventServiceServicer_to_server(EventServicer(daemon.jobs.events), server)
        jobs_pb2_grpc.add_NodeServiceServicer_to_server(
            NodeServicer(cgroup_version=self.cgroup_version, snapshotter=daemon.config.snapshots.backend,
                         engine=daemon.engine, images=daemon.images), server)
        cluster_pb2_grpc.add_ClusterServiceServicer_to_server(ClusterServicer(daemon.cluster), server)
        tls = daemon.config.tls
        creds = grpc.ssl_server_credentials(
            [(tls.key_pem.encode(), tls.cert_pem.encode())],
            root_certificates=tls.ca_pem.encode(),
            require_client_auth=True,
        )
        try:
            port = server.add_secure_port(self.listen, creds)
        except RuntimeError:   # grpc.aio raises where the sync server returned 0
            port = 0
        if port == 0:
            raise OSError(f"cannot listen on {self.listen}")
        self._server = server

    def start(self) -> None:
        assert self._server is not None
        self._call(self._server.start())

    def stop(self, grace: float | None = None) -> threading.Event:
        """Refuse new calls, give open ones ``grace`` seconds, then cancel them; returns the 'stopped' event."""
        if self._server is None or not self.loop.is_running():
            self._stopped.set()
            return self._stopped
        server, self._server = self._server, None
        done = asyncio.run_coroutine_threadsafe(server.stop(grace), self.loop)
        # The callback runs on the loop thread, which cannot join itself: finish from a helper thread.
        done.add_done_callback(lambda _f: threading.Thread(target=self._shutdown_loop, name="rpc-stop").start())
        return self._stopped


def _prestart(pool: futures.ThreadPoolExecutor, threads: int) -> None:
    """Start every thread of ``pool`` now: the daemon's thread count is then fixed, whatever the load
    (an executor otherwise grows lazily and never shrinks, which hides leaks in a thread count)."""
    barrier = threading.Barrier(threads + 1)
    for _ in range(threads):
        pool.submit(barrier.wait, 10)
    barrier.wait(10)


def build_server(daemon: Daemon, listen: str, *, cgroup_version: int) -> ApiServer:
    """A gRPC server with every service registered, bound to ``listen`` with mTLS; not started yet.

    Raises OSError when the address cannot be bound.
    """
    return ApiServer(daemon, listen, cgroup_version=cgroup_version, limits=daemon.config.api)
