"""gRPC streams to server-sent events (capsa.web.streams) with fake calls: every chunk once and in order,
ids = sequence numbers, UTF-8 split across chunks, back-pressure instead of loss, errors reported,
cancellation on close."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import grpc

from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from capsa.web.streams import ThreadStream, log_events, poll_events


class FakeCall:
    def __init__(self, items: list[Any], error: grpc.RpcError | None = None, hold: threading.Event | None = None):
        self.items, self.error, self.hold = items, error, hold
        self.cancelled = threading.Event()
        self.produced = 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.items:
            if self.cancelled.is_set():
                return
            self.produced += 1
            yield item
        if self.hold is not None:
            self.hold.wait(5)
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        self.cancelled.set()
        if self.hold is not None:
            self.hold.set()


class Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "daemon went away"


def _parse(raw: list[bytes]) -> list[tuple[str, str, Any]]:
    events = []
    for block in b"".join(raw).decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if fields:
            events.append((fields.get("event", ""), fields.get("id", ""), json.loads(fields["data"])))
    return events


async def _collect(call: FakeCall) -> list[tuple[str, str, Any]]:
    return _parse([chunk async for chunk in log_events(lambda: call)])


def test_every_chunk_once_in_order_with_the_last_seq_as_event_id() -> None:
    snowman = "☃".encode()
    chunks = [pb.LogChunk(seq=1, stream=1, data=b"a" + snowman[:1]), pb.LogChunk(seq=2, stream=2, data=b"err\n"),
              pb.LogChunk(seq=3, stream=1, data=snowman[1:] + b"b\n")]
    events = asyncio.run(_collect(FakeCall(chunks)))
    assert events[-1][0] == "end"
    logs = [e for e in events if e[0] == "log"]
    got = [c for _, _, data in logs for c in data["c"]]
    assert [c[0] for c in got] == [1, 2, 3] and all(int(eid) == data["c"][-1][0] for _, eid, data in logs)
    assert "".join(c[2] for c in got if c[1] == 1) == "a☃b\n", "a character split across chunks renders whole"


def test_a_failed_stream_ends_with_a_failure_event() -> None:
    events = asyncio.run(_collect(FakeCall([pb.LogChunk(seq=1, stream=1, data=b"x")], error=Unavailable())))
    assert events[-1][0] == "failure" and "daemon went away" in events[-1][2]["message"]


def test_a_slow_reader_holds_the_producer_back_and_loses_nothing() -> None:
    items = [pb.LogChunk(seq=i, stream=1, data=b"x" * 10) for i in range(1, 2001)]
    call = FakeCall(items)

    async def slow() -> list[int]:
        stream = ThreadStream(call, maxsize=8)
        seen: list[int] = []
        try:
            async for batch in stream.batches(max_items=4):
                await asyncio.sleep(0)
                if len(seen) == 40:
                    await asyncio.sleep(0.1)
                    assert call.produced < 100, "the producer waits for the reader"
                seen.extend(c.seq for c in batch)
        finally:
            stream.close()
        return seen
    assert asyncio.run(slow()) == list(range(1, 2001))


def test_closing_cancels_the_call() -> None:
    hold = threading.Event()
    call = FakeCall([pb.LogChunk(seq=1, stream=1, data=b"x")], hold=hold)

    async def first_then_close() -> None:
        stream = ThreadStream(call)
        async for batch in stream.batches():
            assert batch
            break
        stream.close()
    asyncio.run(first_then_close())
    assert call.cancelled.is_set()


def test_poll_events_send_changes_only_and_end_when_told() -> None:
    values = iter([{"s": "RUNNING"}, {"s": "RUNNING"}, {"s": "COMPLETED"}])

    async def fetch() -> Any:
        return next(values)

    async def run() -> list[tuple[str, str, Any]]:
        return _parse([c async for c in poll_events(fetch, interval=0.001, until=lambda v: v["s"] == "COMPLETED")])
    events = asyncio.run(run())
    assert [(e[0], e[2]) for e in events] == [("state", {"s": "RUNNING"}), ("state", {"s": "COMPLETED"}), ("end", {})]
