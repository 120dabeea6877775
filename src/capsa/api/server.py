"""The daemon's gRPC surface: one server, its interceptors, and every servicer registered on it.

What the servicers serve is built by ``capsa.daemon.Daemon`` (the composition root).
"""

from __future__ import annotations

from concurrent import futures
from typing import TYPE_CHECKING

import grpc

from capsa.api.auth import AuthInterceptor
from capsa.api.gen.capsa.v1 import (
    capsules_pb2_grpc,
    cluster_pb2_grpc,
    images_pb2_grpc,
    jobs_pb2_grpc,
    metrics_pb2_grpc,
    networks_pb2_grpc,
    runtimes_pb2_grpc,
    workflows_pb2_grpc,
)
from capsa.api.servicers.capsules import CapsuleServicer
from capsa.api.servicers.cluster import ClusterServicer
from capsa.api.servicers.images import ImageServicer
from capsa.api.servicers.jobs import JobServicer, NodeServicer
from capsa.api.servicers.metrics import MetricsServicer
from capsa.api.servicers.networks import NetworkServicer, VolumeServicer
from capsa.api.servicers.runtimes import RuntimeServicer
from capsa.api.servicers.workflows import WorkflowServicer
from capsa.capsules.distribution import CapsuleDistribution

if TYPE_CHECKING:
    from capsa.daemon import Daemon

__all__ = ["build_server"]


def build_server(daemon: Daemon, listen: str, *, cgroup_version: int) -> grpc.Server:
    """A gRPC server with every service registered, bound to ``listen`` with mTLS; not started yet.

    Raises OSError when the address cannot be bound.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="rpc"),
        interceptors=[*daemon.metrics.interceptors, AuthInterceptor()],
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.so_reuseport", 0)],
    )
    jobs_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(daemon.jobs), server)
    images_pb2_grpc.add_ImageServiceServicer_to_server(ImageServicer(daemon.images), server)
    workflows_pb2_grpc.add_WorkflowServiceServicer_to_server(WorkflowServicer(daemon.workflows), server)
    metrics_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsServicer(daemon.metrics.sampler, daemon.jobs), server)
    networks_pb2_grpc.add_NetworkServiceServicer_to_server(NetworkServicer(daemon.networks), server)
    runtimes_pb2_grpc.add_RuntimeServiceServicer_to_server(RuntimeServicer(daemon.runtimes), server)
    networks_pb2_grpc.add_VolumeServiceServicer_to_server(VolumeServicer(daemon.volumes), server)
    capsules_pb2_grpc.add_CapsuleServiceServicer_to_server(CapsuleServicer(
        daemon.capsule_store, daemon.capsules,
        CapsuleDistribution(daemon.capsule_store, registry=daemon.images.pc.registry, s3=daemon.images.pc.s3)), server)
    jobs_pb2_grpc.add_NodeServiceServicer_to_server(
        NodeServicer(cgroup_version=cgroup_version, snapshotter=daemon.config.snapshots.backend), server)
    cluster_pb2_grpc.add_ClusterServiceServicer_to_server(ClusterServicer(daemon.cluster), server)
    tls = daemon.config.tls
    creds = grpc.ssl_server_credentials(
        [(tls.key_pem.encode(), tls.cert_pem.encode())],
        root_certificates=tls.ca_pem.encode(),
        require_client_auth=True,
    )
    port = server.add_secure_port(listen, creds)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    return server
