"""RuntimeService servicer (thin: capsa.runtimes does the work)."""

from __future__ import annotations

import json
from typing import Any

import grpc

from capsa.api.gen.capsa.v1 import runtimes_pb2 as pb
from capsa.api.gen.capsa.v1 import runtimes_pb2_grpc as pb_grpc
from capsa.api.servicers._base import rpc
from capsa.api.streams import BlockingStreams
from capsa.runtimes import Runtime, RuntimeService

__all__ = ["RuntimeServicer", "runtime_to_pb"]


def runtime_to_pb(rt: Runtime, builds: list[Any] | None = None) -> pb.Runtime:
    return pb.Runtime(
        name=rt.name, version=rt.version, ref=rt.ref, image_ref=rt.image_ref, digest=rt.digest, size=rt.size,
        created_at_ns=rt.created_ns, spec_hash=rt.spec_hash, spec_json=json.dumps(rt.spec, sort_keys=True),
        base=rt.base, description=rt.description, in_use_by=rt.in_use_by,
        layers=[pb.RuntimeLayer(digest=la["digest"], size=int(la["size"]), media_type=la.get("media_type", ""))
                for la in rt.layers],
        builds=[pb.BuildRun(run_id=r.run_id, state=r.state, error_message=r.error_message or "",
                            created_at_ns=int(r.created_at * 1e9), finished_at_ns=int((r.finished_at or 0) * 1e9))
                for r in builds or []],
    )


class RuntimeServicer(pb_grpc.RuntimeServiceServicer):
    def __init__(self, runtimes: RuntimeService, blocking: BlockingStreams) -> None:
        self.runtimes = runtimes
        self.blocking = blocking

    @rpc
    async def BuildRuntime(self, request: pb.BuildRuntimeRequest, context: Any) -> Any:
        # Watching a build blocks between polls of its log: it runs on the bounded stream pool.
        async for msg in self.blocking.iterate("BuildRuntime", lambda stop: self._build(request, stop)):
            yield msg

    def _build(self, request: pb.BuildRuntimeRequest, gone: Any) -> Any:
        handle = self.runtimes.start_build(request.spec_yaml, force=request.force, source=request.source or "spec")
        for event in self.runtimes.watch(handle.run_id, stop=gone):   # gone: stop streaming (the build goes on)
            msg = pb.BuildProgress(run_id=event.run_id, phase=event.phase, step=event.step, steps=event.steps,
                                   log=event.log, done=event.done, up_to_date=event.up_to_date)
            if event.runtime is not None:
                msg.runtime.CopyFrom(runtime_to_pb(event.runtime))
            yield msg

    @rpc
    def ListRuntimes(self, request: pb.ListRuntimesRequest, context: grpc.ServicerContext) -> pb.ListRuntimesResponse:
        return pb.ListRuntimesResponse(runtimes=[runtime_to_pb(r) for r in self.runtimes.list()])

    @rpc
    def InspectRuntime(self, request: pb.InspectRuntimeRequest, context: grpc.ServicerContext) -> pb.Runtime:
        rt = self.runtimes.get(request.name)
        return runtime_to_pb(rt, self.runtimes.history(rt.ref))

    @rpc
    def RemoveRuntime(self, request: pb.RemoveRuntimeRequest,
                      context: grpc.ServicerContext) -> pb.RemoveRuntimeResponse:
        return pb.RemoveRuntimeResponse(removed=self.runtimes.remove(request.name, force=request.force))
