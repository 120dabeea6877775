"""EventService: lifecycle events from the durable ``events`` table, as an async server stream.

The stream holds no thread: it awaits between polls on the event loop, and a poll first compares
the in-memory last seq (no query while nothing happened), then reads new rows on the default
executor for the few milliseconds a query takes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from capsa.api.gen.capsa.v1 import events_pb2 as pb
from capsa.api.gen.capsa.v1 import events_pb2_grpc as pb_grpc
from capsa.api.servicers._base import rpc
from capsa.errors import InvalidArgument
from capsa.events import EVENT_TYPES, Event, EventLog

__all__ = ["EventServicer", "event_to_pb"]

POLL_S = 0.1


def event_to_pb(event: Event) -> pb.Event:
    return pb.Event(seq=event.seq, time_ns=event.time_ns, type=event.type, action=event.action, id=event.id,
                    name=event.name, attributes=event.attributes)


class EventServicer(pb_grpc.EventServiceServicer):
    def __init__(self, events: EventLog) -> None:
        self.events = events

    @rpc
    async def Events(self, request: pb.EventsRequest, context: Any) -> Any:
        unknown = sorted(set(request.types) - set(EVENT_TYPES))
        if unknown:
            raise InvalidArgument(f"event type {unknown[0]!r}: expected one of {', '.join(EVENT_TYPES)}")
        types, ids = tuple(request.types), tuple(request.ids)
        loop = asyncio.get_running_loop()
        cursor = await loop.run_in_executor(None, self.events.start_seq, request.since_ns)
        replaying = True
        while True:
            if replaying or self.events.last_seq > cursor:
                high = await loop.run_in_executor(None, self.events.visible_seq)
                batch = await loop.run_in_executor(
                    None, lambda c=cursor, h=high: self.events.after(c, types=types, ids=ids, upto=h))
                for event in batch:
                    yield event_to_pb(event)
                    cursor = event.seq
                if len(batch) == 500:
                    continue   # more to replay before waiting
                # past events the filter skipped too, so they are not scanned again on every poll
                cursor = max(cursor, high)
                replaying = False
            if not request.follow:
                return
            await asyncio.sleep(POLL_S)
