"""CapsuleService servicer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import grpc

from capsa.api.gen.capsa.v1 import capsules_pb2 as pb
from capsa.api.gen.capsa.v1 import capsules_pb2_grpc as pb_grpc
from capsa.api.servicers._base import rpc
from capsa.api.streams import BlockingStreams
from capsa.capsules import Attachment, CapsuleStore, CapsuleVersion
from capsa.capsules.distribution import CapsuleDistribution
from capsa.capsules.manager import CapsuleManager, MountChange
from capsa.errors import InvalidArgument

__all__ = ["CapsuleServicer", "capsule_to_pb"]


def _ns(when: Any) -> int:
    return int(when.timestamp() * 1e9)


def attachment_to_pb(a: Attachment) -> pb.CapsuleAttachment:
    return pb.CapsuleAttachment(job_id=a.job_id, name=a.name, version=a.version, digest=a.digest, target=a.target,
                                attached_at_ns=_ns(a.attached_at))


def capsule_to_pb(v: CapsuleVersion, attachments: list[Attachment]) -> pb.Capsule:
    return pb.Capsule(
        name=v.name, version=v.version, digest=v.digest, size=v.size, entries=v.entries, dependencies=list(v.deps),
        labels=v.labels, pinned=v.pinned, created_at_ns=_ns(v.created_at), last_used_at_ns=_ns(v.last_used_at),
        attachments=[attachment_to_pb(a) for a in attachments if a.name == v.name and a.version == v.version],
    )


def _change_to_pb(change: MountChange) -> pb.MountChange:
    return pb.MountChange(job_id=change.job_id, added=[attachment_to_pb(a) for a in change.added],
                          removed=[attachment_to_pb(a) for a in change.removed],
                          kept=[attachment_to_pb(a) for a in change.kept], latency_ns=change.latency_ns)


def _upload(requests: Iterator[pb.CreateCapsuleRequest]) -> tuple[pb.CapsuleHeader, Iterator[bytes]]:
    first = next(requests, None)
    if first is None or not first.HasField("header") or not first.header.name:
        raise InvalidArgument("a capsule upload starts with a header naming the capsule and its version")

    def data() -> Iterator[bytes]:
        if first.data:
            yield first.data
        for item in requests:
            if item.HasField("header"):
                raise InvalidArgument("a capsule upload has exactly one header, in its first message")
            yield item.data

    return first.header, data()


class CapsuleServicer(pb_grpc.CapsuleServiceServicer):
    def __init__(self, store: CapsuleStore, manager: CapsuleManager, distribution: CapsuleDistribution,
                 blocking: BlockingStreams) -> None:
        self.store = store
        self.manager = manager
        self.distribution = distribution
        self.blocking = blocking

    def _one(self, version: CapsuleVersion) -> pb.Capsule:
        return capsule_to_pb(version, self.store.attachments())

    @rpc
    async def Create(self, request_iterator: Any, context: Any) -> pb.Capsule:
        # Unpacking blocks: the upload runs on a thread of the bounded stream pool, reading the
        # request stream from the event loop.
        loop = asyncio.get_running_loop()

        def create() -> pb.Capsule:
            header, chunks = _upload(BlockingStreams.requests_in_thread(request_iterator, loop))
            created = self.distribution.create_from_upload(header.name, header.version, chunks,
                                                           deps=list(header.dependencies), labels=dict(header.labels),
                                                           request_id=header.request_id)
            return self._one(created)

        return await self.blocking.call("capsule Create", create)

    @rpc
    def List(self, request: pb.ListCapsulesRequest, context: grpc.ServicerContext) -> pb.ListCapsulesResponse:
        attachments = self.store.attachments()
        return pb.ListCapsulesResponse(capsules=[capsule_to_pb(v, attachments)
                                                 for v in self.store.list(request.name or None)])

    @rpc
    def Inspect(self, request: pb.CapsuleRef, context: grpc.ServicerContext) -> pb.Capsule:
        return self._one(self.store.get(request.name, request.version))

    @rpc
    def Remove(self, request: pb.CapsuleRef, context: grpc.ServicerContext) -> pb.RemoveCapsuleResponse:
        found = self.store.get(request.name, request.version)
        self.store.remove(found.name, found.version)
        return pb.RemoveCapsuleResponse(removed=found.ref)

    @rpc
    def Pin(self, request: pb.CapsuleRef, context: grpc.ServicerContext) -> pb.Capsule:
        self.store.pin(request.name, request.version)
        return self._one(self.store.get(request.name, request.version))

    @rpc
    def Unpin(self, request: pb.CapsuleRef, context: grpc.ServicerContext) -> pb.Capsule:
        self.store.unpin(request.name, request.version)
        return self._one(self.store.get(request.name, request.version))

    @rpc
    def Attach(self, request: pb.AttachCapsuleRequest, context: grpc.ServicerContext) -> pb.MountChange:
        return _change_to_pb(self.manager.attach(request.job_id, request.capsule, at=request.target or None))

    @rpc
    def Swap(self, request: pb.SwapCapsuleRequest, context: grpc.ServicerContext) -> pb.MountChange:
        return _change_to_pb(self.manager.swap(request.job_id, request.capsule))

    @rpc
    def Detach(self, request: pb.DetachCapsuleRequest, context: grpc.ServicerContext) -> pb.MountChange:
        return _change_to_pb(self.manager.detach(request.job_id, request.name))

    @rpc
    def Push(self, request: pb.PushCapsuleRequest, context: grpc.ServicerContext) -> pb.PushCapsuleResponse:
        done = self.distribution.push(request.capsule, request.destination, insecure=request.insecure)
        return pb.PushCapsuleResponse(location=done.location, digest=done.digest, size=done.size,
                                      manifest_digest=done.manifest_digest)

    @rpc
    def Pull(self, request: pb.PullCapsuleRequest, context: grpc.ServicerContext) -> pb.Capsule:
        return self._one(self.distribution.pull(request.source, insecure=request.insecure))

    @rpc
    def Gc(self, request: pb.GcCapsulesRequest, context: grpc.ServicerContext) -> pb.GcCapsulesResponse:
        older = timedelta(seconds=request.older_than_seconds) if request.older_than_seconds else None
        report = self.distribution.gc(unused=request.unused, older_than=older, dry_run=request.dry_run)
        return pb.GcCapsulesResponse(removed_versions=list(report.removed_versions),
                                     removed_content=list(report.removed_content), bytes_freed=report.bytes_freed,
                                     dry_run=report.dry_run)

    @rpc
    def Verify(self, request: pb.VerifyCapsulesRequest, context: grpc.ServicerContext) -> pb.VerifyCapsulesResponse:
        reports = self.distribution.verify(request.ref, all_versions=request.all, repair=request.repair)
        return pb.VerifyCapsulesResponse(reports=[pb.CapsuleVerifyReport(
            ref=r.ref, digest=r.digest, ok=r.ok, problem=r.problem, entries=r.entries, repaired=r.repaired,
            repair_error=r.repair_error) for r in reports])
