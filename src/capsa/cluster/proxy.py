"""Node-to-node calls over mutual TLS with this node's ``node`` certificate (role ``node``).

Stops are unary calls made from the server's thread pool (a cached sync channel per peer); log
relays are async streams on the server's event loop (a cached grpc.aio channel per peer and loop,
since an aio channel belongs to the loop that made it).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import grpc
import grpc.aio

from capsa.api.errors import from_rpc_error
from capsa.api.gen.capsa.v1 import cluster_pb2 as cpb
from capsa.api.gen.capsa.v1 import cluster_pb2_grpc as cpb_grpc
from capsa.api.gen.capsa.v1 import jobs_pb2 as pb

__all__ = ["NodeDialer"]


class NodeDialer:
    def __init__(self, *, ca_pem: str, cert_pem: str, key_pem: str, timeout: float = 30.0) -> None:
        self._creds = grpc.ssl_channel_credentials(root_certificates=ca_pem.encode(), private_key=key_pem.encode(),
                                                   certificate_chain=cert_pem.encode())
        self.timeout = timeout
        self._channels: dict[str, grpc.Channel] = {}
        self._aio: dict[tuple[str, int], grpc.aio.Channel] = {}
        self._lock = threading.Lock()

    def stop(self, address: str, pool_job_id: str, local_id: str, grace_s: float) -> str:
        try:
            return str(cpb_grpc.ClusterServiceStub(self._channel(address)).NodeStopJob(
                cpb.NodeStopJobRequest(id=local_id, grace_seconds=grace_s, pool_job_id=pool_job_id),
                timeout=grace_s + 30).state)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address=address) from None

    def get(self, address: str, pool_job_id: str, local_id: str) -> pb.Job:
        try:
            return cpb_grpc.ClusterServiceStub(self._channel(address)).NodeGetJob(
                cpb.NodeGetJobRequest(id=local_id, pool_job_id=pool_job_id), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address=address) from None

    def _channel(self, address: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = grpc.secure_channel(address, self._creds)
            return channel

    async def logs(self, address: str, pool_job_id: str, local_id: str, *, follow: bool,
                   from_seq: int) -> AsyncIterator[pb.LogChunk]:
        key = (address, id(asyncio.get_running_loop()))
        with self._lock:
            channel = self._aio.get(key)
            if channel is None:
                channel = self._aio[key] = grpc.aio.secure_channel(address, self._creds)
        call = cpb_grpc.ClusterServiceStub(channel).NodeLogs(
            cpb.NodeLogsRequest(id=local_id, follow=follow, from_seq=from_seq, pool_job_id=pool_job_id),
            timeout=None if follow else self.timeout)
        try:
            async for chunk in call:
                yield chunk
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address=address) from None
        finally:
            call.cancel()

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
            self._aio.clear()   # closed with their loop (the server's), which stops before this
