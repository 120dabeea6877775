"""FileService: ``capsa cp`` out of and into jobs' /work, as tar chunks (see capsa.jobs.copying)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

from capsa import tarstream
from capsa.api.gen.capsa.v1 import files_pb2 as pb
from capsa.api.gen.capsa.v1 import files_pb2_grpc as pb_grpc
from capsa.api.servicers._base import rpc
from capsa.api.streams import BlockingStreams
from capsa.errors import Canceled, InvalidArgument
from capsa.jobs.copying import JobFiles

__all__ = ["FileServicer"]


class FileServicer(pb_grpc.FileServiceServicer):
    def __init__(self, files: JobFiles, blocking: BlockingStreams) -> None:
        self.files = files
        self.blocking = blocking

    @rpc
    async def CopyOut(self, request: pb.CopyOutRequest, context: Any) -> Any:
        # Reading the tree blocks: it runs on one thread of the bounded stream pool, handing
        # chunks to the loop with back-pressure (a slow client holds the reader, not memory).
        def chunks(stop: threading.Event) -> Iterator[bytes]:
            items = self.files.copy_out(request.job_id, request.path, request.fast_token)
            for chunk in tarstream.encode(items):
                if stop.is_set():
                    return
                yield chunk

        async for data in self.blocking.iterate("CopyOut", chunks):
            yield pb.TarChunk(data=data)

    @rpc
    async def CopyIn(self, request_iterator: Any, context: Any) -> pb.CopyInResult:
        loop = asyncio.get_running_loop()
        head: dict[str, str] = {}
        ended: list[bool] = []
        requests = BlockingStreams.requests_in_thread(request_iterator, loop)

        def data() -> Iterator[bytes]:
            for c in requests:
                if ended:
                    raise InvalidArgument("copy data after the message marked done")
                if c.data:
                    yield c.data
                if c.done:
                    ended.append(True)
            if not ended or context.cancelled():
                # Without the marker the tar may be cut short at an entry boundary: keep nothing.
                raise Canceled("the copy stream ended without its end marker (canceled?): nothing was written")

        def run() -> Any:
            first = next(requests, None)
            if first is None:
                raise InvalidArgument("empty copy stream")
            head["job"], head["path"] = first.job_id, first.path
            if first.done:
                ended.append(True)

            def all_data() -> Iterator[bytes]:
                if first.data:
                    yield first.data
                if not ended:
                    yield from data()

            source = all_data()
            return self.files.copy_in(first.job_id, first.path, _drained(tarstream.decode(source), source),
                                      first.fast_token)

        done = await self.blocking.call("CopyIn", run)
        return pb.CopyInResult(path=done.name, files=done.files, dirs=done.dirs, symlinks=done.symlinks,
                               bytes=done.bytes)

    @rpc
    async def FastPath(self, request: pb.FastPathRequest, context: Any) -> pb.FastPathReply:
        path, token, ttl = self.files.fast.issue()
        return pb.FastPathReply(socket_path=path, token=token, ttl_seconds=ttl)


def _drained(items: Iterator[Any], source: Iterator[bytes]) -> Iterator[Any]:
    """The items, then the rest of the stream: tarfile stops at the end-of-archive blocks, and the
    end marker must be seen before anything is renamed into the job."""
    yield from items
    for _ in source:
        pass
