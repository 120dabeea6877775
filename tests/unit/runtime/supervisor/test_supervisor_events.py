"""Exit events go through a bounded, non-blocking queue per subscriber: a slow one never stalls the loop."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sup_fakes import Harness

from capsa.logs import LogPersister, Stream, is_finished, read_log
from capsa.runtime.protocol import ExitEvent, OkReply, ProcState, decode
from capsa.runtime.supervisor import Connection
from capsa.runtime.wire import FrameReader


def subscribe_raw(h: Harness) -> tuple[socket.socket, Connection]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(h.supervisor.sock_path))
    body = b'{"type":"subscribe","id":1,"body":{}}'
    sock.sendall(struct.pack(">I", len(body)) + body)
    reader = FrameReader()
    frames: list[dict[str, object]] = []
    while not frames:
        frames = reader.feed(sock.recv(4096))
    assert isinstance(decode(frames[0])[1], OkReply)
    conn = next(iter(h.supervisor.subscribers))
    # The supervisor's side of this connection takes only a few KiB before it must queue.
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return sock, conn


def read_events(sock: socket.socket, n: int) -> list[ExitEvent]:
    reader, out = FrameReader(), []
    while len(out) < n:
        data = sock.recv(65536)
        if not data:
            break
        out.extend(msg for f in reader.feed(data) if isinstance(msg := decode(f)[1], ExitEvent))
    return out


def test_a_subscriber_that_does_not_read_queues_events_without_stalling_the_loop(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("capsa.runtime.supervisor._links.EVENT_LOW_WATER", 512)
    sock, conn = subscribe_raw(harness)
    specs = [harness.spec("/quick") for _ in range(200)]
    for spec in specs:   # every start is answered while the subscriber reads nothing
        harness.client.start(spec)
    deadline = time.monotonic() + 5
    while (sum(r.state == ProcState.EXITED for r in harness.client.list()) < 200
           or harness.supervisor.unpublished) and time.monotonic() < deadline:   # every event handed over
        time.sleep(0.01)
    assert len(conn.events) > 100, "events should be waiting in the queue, not in a blocked send"
    t0 = time.monotonic()
    harness.client.ping()   # a loop stuck in a send would never answer (the client gives up after 5 s)
    assert time.monotonic() - t0 < 2
    events = read_events(sock, 200)
    got = [e.job.job_id for e in events]
    assert len(got) == 200 and set(got) == {s.job_id for s in specs}   # each exactly once
    sock.close()


def test_a_subscriber_too_far_behind_is_cut_off_and_the_exits_stay_listed(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("capsa.runtime.supervisor._links.EVENT_LOW_WATER", 512)
    monkeypatch.setattr("capsa.runtime.supervisor._links.MAX_PENDING_EVENTS", 10)
    sock, conn = subscribe_raw(harness)
    specs = [harness.spec("/quick") for _ in range(100)]
    for spec in specs:
        harness.client.start(spec)
    deadline = time.monotonic() + 5
    while not conn.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert conn.closed
    received = read_events(sock, 100)   # what was sent before the cut, then EOF
    assert len(received) < 100
    listed = {r.job_id: r for r in harness.client.list()}
    assert all(listed[s.job_id].state == ProcState.EXITED for s in specs)
    sock.close()


def test_the_event_consumer_may_call_the_supervisor_back(harness: Harness) -> None:
    forgotten: list[str] = []

    def on_event(event: ExitEvent) -> None:   # what the daemon's JobService does
        time.sleep(0.001)
        harness.client.forget(event.job.job_id)
        forgotten.append(event.job.job_id)

    harness.client.subscribe(on_event)
    specs = [harness.spec("/quick") for _ in range(100)]
    for spec in specs:
        harness.client.start(spec)
    deadline = time.monotonic() + 5
    while len(forgotten) < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(forgotten) == sorted(s.job_id for s in specs)
    assert harness.client.list() == []


class SlowFinish:
    """A persister whose logs take ``delay`` seconds to write their end record (a slow fsync)."""

    def __init__(self, real: LogPersister, delay: float) -> None:
        self.real, self.delay = real, delay

    def open(self, job_id: str, log_dir: Path, *, max_bytes: int = 0) -> Any:
        log = self.real.open(job_id, log_dir, max_bytes=max_bytes)
        finish = log.finish

        def slow_finish() -> None:
            threading.Timer(self.delay, finish).start()

        log.finish = slow_finish   # type: ignore[method-assign]
        return log

    def close(self) -> None:
        self.real.close()


def test_an_exit_event_waits_until_the_jobs_log_is_finished(harness: Harness) -> None:
    assert harness.supervisor.persister is not None
    harness.supervisor.persister = SlowFinish(harness.supervisor.persister, 0.3)  # type: ignore[assignment]
    seen: list[tuple[bool, bytes]] = []
    done = threading.Event()

    def on_event(event: ExitEvent) -> None:   # what the daemon does next: read the job's whole output
        log_dir = Path(spec.log_dir)
        out = b"".join(c.data for c in read_log(log_dir) if c.stream == Stream.STDOUT)
        seen.append((is_finished(log_dir), out))
        done.set()

    harness.client.subscribe(on_event)
    spec = harness.spec("/echo", "every", "byte")
    t0 = time.monotonic()
    harness.client.start(spec)
    assert done.wait(5)
    assert time.monotonic() - t0 >= 0.3
    assert seen == [(True, b"every byte\n")]
