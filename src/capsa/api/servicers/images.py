"""ImageService servicer."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc

from capsa.api.gen.capsa.v1 import images_pb2 as pb
from capsa.api.gen.capsa.v1 import images_pb2_grpc as pb_grpc
from capsa.api.servicers._base import rpc
from capsa.api.streams import BlockingStreams
from capsa.errors import Canceled, InvalidArgument
from capsa.fsm import RunInfo
from capsa.images.service import ImageService
from capsa.images.store import ImageRecord
from capsa.images.transfer import BlobState

__all__ = ["ImageServicer", "image_to_pb"]


def image_to_pb(rec: ImageRecord) -> pb.Image:
    return pb.Image(
        ref=rec.ref, digest=rec.digest, size=rec.size, created_at_ns=rec.created_ns,
        layers=[pb.Layer(digest=la["digest"], size=int(la["size"]), media_type=la.get("media_type", ""))
                for la in rec.layers],
        config_json=json.dumps(rec.config), source=rec.source, in_use_by=rec.users, unpacked_size=rec.unpacked_size,
    )


def _run_to_pb(run: RunInfo, events: list[Any]) -> pb.FsmRun:
    return pb.FsmRun(
        run_id=run.run_id, machine=run.machine, resource_id=run.resource_id, action=run.action, state=run.state,
        current_transition=run.current_transition or "", attempt=run.attempt, error_code=run.error_code or "",
        error_message=run.error_message or "", created_at_ns=int(run.created_at * 1e9),
        finished_at_ns=int((run.finished_at or 0) * 1e9),
        events=[pb.FsmEvent(seq=e.seq, kind=e.kind, transition=e.transition or "", message=e.message or "",
                            at_ns=int(e.at * 1e9)) for e in events],
    )


class ImageServicer(pb_grpc.ImageServiceServicer):
    def __init__(self, images: ImageService, blocking: BlockingStreams) -> None:
        self.images = images
        self.blocking = blocking

    @rpc
    async def PullImage(self, request: pb.PullImageRequest, context: Any) -> Any:
        # Watching a pull blocks between progress polls: it runs on the bounded stream pool.
        async for msg in self.blocking.iterate("PullImage", lambda stop: self._pull(request, stop)):
            yield msg

    def _pull(self, request: pb.PullImageRequest, stop: Any) -> Any:
        run_id = self.images.start_pull(request.ref, platform=request.platform, insecure=request.insecure,
                                        expected_digest=request.expected_digest, request_id=request.request_id)
        for update in self.images.watch_pull(run_id):
            msg = pb.PullProgress(
                run_id=update.run_id, phase=update.phase, done=update.done,
                layers=[pb.LayerProgress(digest=la["digest"], bytes=la["bytes"], total=la["total"], state=la["state"])
                        for la in update.layers],
            )
            if update.done:
                msg.image.CopyFrom(image_to_pb(self.images.get(request.ref)))
            yield msg
            if stop.is_set():   # the client went away; the pull goes on
                return

    @rpc
    def ListImages(self, request: pb.ListImagesRequest, context: grpc.ServicerContext) -> pb.ListImagesResponse:
        return pb.ListImagesResponse(images=[image_to_pb(r) for r in self.images.list()])

    @rpc
    def InspectImage(self, request: pb.InspectImageRequest, context: grpc.ServicerContext) -> pb.Image:
        return image_to_pb(self.images.get(request.ref))

    @rpc
    def RemoveImage(self, request: pb.RemoveImageRequest, context: grpc.ServicerContext) -> pb.RemoveImageResponse:
        return pb.RemoveImageResponse(removed=self.images.remove(request.ref, force=request.force))

    @rpc
    def PruneImages(self, request: pb.PruneImagesRequest, context: grpc.ServicerContext) -> pb.PruneImagesResponse:
        removed, freed = self.images.prune(dry_run=request.dry_run)
        return pb.PruneImagesResponse(removed=removed, bytes_freed=freed)

    @rpc
    def ImageHistory(self, request: pb.ImageHistoryRequest, context: grpc.ServicerContext) -> pb.ImageHistoryResponse:
        runs = self.images.history(request.ref, limit=request.limit or 20)
        return pb.ImageHistoryResponse(runs=[_run_to_pb(r, self.images.engine.events(r.run_id)) for r in runs])

    @rpc
    def VerifyImages(self, request: pb.VerifyImagesRequest, context: grpc.ServicerContext) -> pb.VerifyImagesResponse:
        reports = self.images.verify(request.ref, all_images=request.all, repair=request.repair)
        return pb.VerifyImagesResponse(reports=[pb.ImageVerifyReport(
            ref=r.ref, digest=r.digest, ok=r.ok, blobs_checked=r.blobs_checked, diff_ids_checked=r.diff_ids_checked,
            snapshots_checked=r.snapshots_checked, problems=r.problems, repaired=r.repaired,
            repair_error=r.repair_error) for r in reports])

    @rpc
    def BackupDatabase(self, request: pb.BackupDatabaseRequest,
                       context: grpc.ServicerContext) -> pb.BackupDatabaseResponse:
        result = self.images.backup_database(request.dest)
        return pb.BackupDatabaseResponse(path=str(result.path), bytes=result.bytes, pages=result.pages,
                                         seconds=result.seconds, integrity=result.integrity)

    # -- tag, push, save, load (capsa.images.transfer and capsa.images.archive) ----------------------
    @rpc
    def TagImage(self, request: pb.TagImageRequest, context: grpc.ServicerContext) -> pb.Image:
        from capsa.images.transfer import tag

        return image_to_pb(tag(self.images.pc.images, self.images.get(request.source), request.target))

    @rpc
    async def PushImage(self, request: pb.PushImageRequest, context: Any) -> Any:
        async for msg in self.blocking.iterate("PushImage", lambda stop: self._push(request, stop)):
            yield msg

    def _push(self, request: pb.PushImageRequest, stop: threading.Event) -> Iterator[pb.TransferProgress]:
        """Progress while the push runs on its own thread; the last message has done=true."""
        from capsa.images.transfer import push

        pc = self.images.pc
        rec = self.images.get(request.ref)
        updates: queue.Queue[list[BlobState] | None] = queue.Queue()
        outcome: list[Any] = []

        def run() -> None:
            try:
                outcome.append(push(pc.content, pc.images, pc.registry, rec, request.destination,
                                    insecure=request.insecure, cancel=stop,
                                    progress=lambda states: updates.put([BlobState(**vars(s)) for s in states])))
            except BaseException as exc:
                outcome.append(exc)
            finally:
                updates.put(None)

        worker = threading.Thread(target=run, name="image-push", daemon=True)
        worker.start()
        latest: dict[str, BlobState] = {}
        while (states := updates.get()) is not None:
            latest.update((s.digest, s) for s in states)
            yield pb.TransferProgress(blobs=[_blob_pb(s) for s in latest.values()])
        worker.join()
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        result = outcome[0]
        yield pb.TransferProgress(blobs=[_blob_pb(s) for s in result.blobs], done=True,
                                  destination=result.destination, digest=result.digest)

    @rpc
    async def SaveImage(self, request: pb.SaveImageRequest, context: Any) -> Any:
        from capsa.images.archive import save_archive

        if not request.refs:
            raise InvalidArgument("name at least one image to save")

        def chunks(stop: threading.Event) -> Iterator[pb.ArchiveChunk]:
            total, data = save_archive(self.images.pc.content, [self.images.get(r) for r in request.refs])
            yield pb.ArchiveChunk(blob_bytes=total)
            for chunk in data:
                if stop.is_set():
                    return
                yield pb.ArchiveChunk(data=chunk)

        async for msg in self.blocking.iterate("SaveImage", chunks):
            yield msg

    @rpc
    async def LoadImage(self, request_iterator: Any, context: Any) -> pb.LoadImageResponse:
        from capsa.images.archive import load

        requests = BlockingStreams.requests_in_thread(request_iterator, asyncio.get_running_loop())
        options: dict[str, str] = {}
        ended: list[bool] = []

        def data() -> Iterator[bytes]:
            for i, chunk in enumerate(requests):
                if ended:
                    raise InvalidArgument("archive data after the message marked done")
                if i == 0:
                    options["tag"] = chunk.tag
                if chunk.data:
                    yield chunk.data
                if chunk.done:
                    ended.append(True)
            if not ended:
                # Without the marker the archive may be cut short at a member boundary: import nothing.
                raise Canceled("the archive stream ended without its end marker (canceled?): nothing was imported")

        def run() -> list[ImageRecord]:
            stream = data()
            first = next(stream, None)   # reads the first message, and with it the options

            def everything() -> Iterator[bytes]:
                if first is not None:
                    yield first
                yield from stream

            return load(self.images, everything(), tag=options.get("tag", ""))

        loaded = await self.blocking.call("LoadImage", run)
        return pb.LoadImageResponse(images=[image_to_pb(r) for r in loaded])


def _blob_pb(state: BlobState) -> pb.BlobTransfer:
    return pb.BlobTransfer(digest=state.digest, size=state.size, done=state.done, state=state.state,
                           media_type=state.media_type)
