"""gRPC server streams (logs, metrics) and polled state, turned into server-sent events.

A gRPC stream is iterated in a thread of its own (a long stream must not hold one of the thread
pool's workers) and handed to the event loop through a bounded queue. The bound gives
back-pressure instead of loss: when the browser reads slowly the thread blocks, gRPC flow control
slows the daemon's sender, and no log byte is ever dropped. When the browser goes away the
response generator is cancelled, which cancels the gRPC call and ends the thread.
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import json
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from capsa.api.errors import from_rpc_error

__all__ = ["HEARTBEAT_S", "ThreadStream", "log_events", "poll_events", "sse"]

HEARTBEAT_S = 15.0
THREAD_NAME = b"capsa-web-strm"   # what `top -H` and /proc/PID/task/*/comm show for a stream's thread
_DONE = object()
LOG_BATCH_BYTES = 256 << 10


def sse(data: Any, *, event: str | None = None, id: int | str | None = None) -> bytes:
    """One event; ``data`` is sent as JSON on a single ``data:`` line (JSON never contains a newline)."""
    lines = []
    if event:
        lines.append(f"event: {event}")
    if id is not None:
        lines.append(f"id: {id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


class ThreadStream:
    """Iterates a cancellable gRPC response (``call``) in a thread; ``items()`` yields batches."""

    def __init__(self, call: Any, *, maxsize: int = 256) -> None:
        self.call = call
        self.error: Exception | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capsa-web-stream", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> None:
        """Blocks while the queue is full (back-pressure), until the reader takes it or goes away."""
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                break
            except queue.Full:
                continue
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:   # the event loop is gone (server shutting down): nobody is waiting
            self._stopped.set()

    def _run(self) -> None:
        _name_this_thread(THREAD_NAME)
        try:
            for item in self.call:
                if self._stopped.is_set():
                    break
                self._put(item)
        except grpc.RpcError as exc:
            if not self._stopped.is_set():
                self.error = from_rpc_error(exc)
        except Exception as exc:   # reported to the browser as an error event, never swallowed
            self.error = exc
        finally:
            self._put(_DONE)   # like data: waits for room, so a slow reader still learns the stream ended

    async def batches(self, max_items: int = 512) -> AsyncIterator[list[Any]]:
        """Whatever has arrived, up to ``max_items`` at a time; ends after the stream ended."""
        while True:
            batch: list[Any] = []
            done = False
            while len(batch) < max_items:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _DONE:
                    done = True
                    break
                batch.append(item)
            if batch:
                yield batch
            if done:
                return
            if not batch:
                self._ready.clear()
                if self._queue.empty():
                    try:
                        await asyncio.wait_for(self._ready.wait(), HEARTBEAT_S)
                    except TimeoutError:
                        yield []   # lets the caller send a heartbeat

    def close(self) -> None:
        self._stopped.set()
        self.call.cancel()


def _name_this_thread(name: bytes) -> None:
    """The kernel's name for the calling thread (Python 3.11 names only its own thread objects), so open
    streams can be counted from outside; a failure only leaves the inherited name."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)   # PR_SET_NAME
    except (OSError, AttributeError):
        pass


async def log_events(open_call: Callable[[], Any]) -> AsyncIterator[bytes]:
    """LogChunks as ``log`` events ``{"c": [[seq, stream, text], ...]}`` with ``id`` = the last seq.

    The id is what the browser resumes from (``from_seq = id + 1``), so a reconnect neither repeats
    nor skips a chunk. Bytes are decoded per stream with an incremental decoder, so a UTF-8
    character split across chunks still renders whole. The RPC is opened here, when the response
    starts, so a request abandoned before that leaves no stream or thread behind.
    """
    decoders = {1: codecs.getincrementaldecoder("utf-8")("replace"),
                2: codecs.getincrementaldecoder("utf-8")("replace")}
    stream = ThreadStream(open_call())
    try:
        async for batch in stream.batches():
            if not batch:
                yield b": keep-alive\n\n"
                continue
            out: list[list[Any]] = []
            size = 0
            for chunk in batch:
                decoder = decoders.setdefault(chunk.stream, codecs.getincrementaldecoder("utf-8")("replace"))
                out.append([chunk.seq, chunk.stream, decoder.decode(chunk.data)])
                size += len(chunk.data)
                if size >= LOG_BATCH_BYTES:
                    yield sse({"c": out}, event="log", id=out[-1][0])
                    out, size = [], 0
            if out:
                yield sse({"c": out}, event="log", id=out[-1][0])
        if stream.error is not None:
            yield sse({"message": str(stream.error)}, event="failure")
        else:
            yield sse({}, event="end")
    finally:
        stream.close()


async def poll_events(fetch: Callable[[], Awaitable[Any]], *, interval: float, event: str = "state",
                      until: Callable[[Any], bool] | None = None) -> AsyncIterator[bytes]:
    """Calls ``fetch`` every ``interval`` seconds and sends its (JSON-able) result when it changed.

    Used for state that has no watch RPC (job lists, workflows, node stats). Ends with an ``end``
    event once ``until(value)`` holds; a failing fetch is reported and retried.
    """
    last: str | None = None
    quiet = 0.0
    while True:
        try:
            value = await fetch()
        except Exception as exc:
            yield sse({"message": str(exc)}, event="failure")
            await asyncio.sleep(max(interval, 2.0))
            continue
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
        if text != last:
            last, quiet = text, 0.0
            yield sse(value, event=event)
        elif quiet >= HEARTBEAT_S:
            quiet = 0.0
            yield b": keep-alive\n\n"
        if until is not None and until(value):
            yield sse({}, event="end")
            return
        await asyncio.sleep(interval)
        quiet += interval
