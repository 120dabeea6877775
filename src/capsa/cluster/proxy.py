"""Node-to-node calls over mutual TLS with this node's ``node`` certificate (role ``node``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc

from capsa.api.errors import from_rpc_error
from capsa.api.gen.capsa.v1 import cluster_pb2 as cpb
from capsa.api.gen.capsa.v1 import cluster_pb2_grpc as cpb_grpc
from capsa.logs import LogChunk, Stream

__all__ = ["NodeDialer"]


class NodeDialer:
    """One cached channel per peer address."""

    def __init__(self, *, ca_pem: str, cert_pem: str, key_pem: str, timeout: float = 30.0) -> None:
        self._creds = grpc.ssl_channel_credentials(root_certificates=ca_pem.encode(), private_key=key_pem.encode(),
                                                   certificate_chain=cert_pem.encode())
        self.timeout = timeout
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def _stub(self, address: str) -> cpb_grpc.ClusterServiceStub:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = grpc.secure_channel(address, self._creds)
        return cpb_grpc.ClusterServiceStub(channel)

    def stop(self, address: str, local_id: str, grace_s: float) -> str:
        try:
            return str(self._stub(address).NodeStopJob(cpb.NodeStopJobRequest(id=local_id, grace_seconds=grace_s),
                                                       timeout=grace_s + 30).state)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address=address) from None

    def logs(self, address: str, local_id: str, *, follow: bool, from_seq: int) -> Iterator[LogChunk]:
        stream = self._stub(address).NodeLogs(cpb.NodeLogsRequest(id=local_id, follow=follow, from_seq=from_seq),
                                              timeout=None if follow else self.timeout)
        try:
            for c in stream:
                yield LogChunk(seq=c.seq, stream=Stream(c.stream), timestamp_ns=c.timestamp_ns, data=c.data)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address=address) from None
        finally:
            stream.cancel()

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
