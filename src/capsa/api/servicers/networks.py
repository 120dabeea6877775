"""NetworkService and VolumeService servicers."""

from __future__ import annotations

import grpc

from capsa.api.gen.capsa.v1 import networks_pb2 as pb
from capsa.api.gen.capsa.v1 import networks_pb2_grpc as pb_grpc
from capsa.api.servicers._base import rpc
from capsa.networks import Network, NetworkManager
from capsa.volumes import Volume, VolumeManager

__all__ = ["NetworkServicer", "VolumeServicer"]


def _network(n: Network) -> pb.Network:
    return pb.Network(name=n.name, kind=n.kind, cidr=n.cidr, bridge=n.bridge or "", builtin=n.builtin,
                      attached=n.attached, created_at_ns=n.created_ns)


def _volume(v: Volume) -> pb.Volume:
    return pb.Volume(name=v.name, type=v.type, size_bytes=v.size_bytes, created_at_ns=v.created_ns, state=v.state,
                     users=list(v.users), mounted=v.mounted, used_bytes=v.used_bytes or 0)


class NetworkServicer(pb_grpc.NetworkServiceServicer):
    def __init__(self, networks: NetworkManager) -> None:
        self.networks = networks

    @rpc
    def CreateNetwork(self, request: pb.CreateNetworkRequest, context: grpc.ServicerContext) -> pb.Network:
        return _network(self.networks.create(request.name, request.cidr))

    @rpc
    def ListNetworks(self, request: pb.ListNetworksRequest, context: grpc.ServicerContext) -> pb.ListNetworksResponse:
        return pb.ListNetworksResponse(networks=[_network(n) for n in self.networks.list()])

    @rpc
    def RemoveNetwork(self, request: pb.RemoveNetworkRequest, context: grpc.ServicerContext) -> pb.RemoveNetworkResponse:
        self.networks.remove(request.name)
        return pb.RemoveNetworkResponse(name=request.name)


class VolumeServicer(pb_grpc.VolumeServiceServicer):
    def __init__(self, volumes: VolumeManager) -> None:
        self.volumes = volumes

    @rpc
    def CreateVolume(self, request: pb.CreateVolumeRequest, context: grpc.ServicerContext) -> pb.Volume:
        return _volume(self.volumes.create(request.name, request.size, request.type or "filesystem"))

    @rpc
    def ListVolumes(self, request: pb.ListVolumesRequest, context: grpc.ServicerContext) -> pb.ListVolumesResponse:
        return pb.ListVolumesResponse(volumes=[_volume(v) for v in self.volumes.list()])

    @rpc
    def RemoveVolume(self, request: pb.RemoveVolumeRequest, context: grpc.ServicerContext) -> pb.RemoveVolumeResponse:
        self.volumes.remove(request.name)
        return pb.RemoveVolumeResponse(name=request.name)
