"""SupervisorClient against a scripted peer: a reply it cannot read fails the call, never hangs it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from capsa.errors import Unavailable
from capsa.runtime.client import SupervisorClient
from capsa.runtime.wire import FrameReader, encode_frame


def scripted_peer(home: Path, answer: Callable[[dict[str, object]], bytes]) -> threading.Thread:
    (home / "run").mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(home / "run" / "supervisor.sock"))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        reader = FrameReader()
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                for frame in reader.feed(data):
                    conn.sendall(answer(frame))
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("reply", [
    lambda f: encode_frame({"type": "teleport", "id": f["id"], "body": {}}),
    lambda f: encode_frame({"type": "pong", "id": f["id"], "body": {"pid": "one", "cgroup_version": 2}}),
    lambda f: b"\xff\xff\xff\xff",
])
def test_a_reply_that_cannot_be_read_fails_the_call_at_once(tmp_path: Path, reply: Callable) -> None:  # type: ignore[type-arg]
    peer = scripted_peer(tmp_path, reply)
    client = SupervisorClient(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(Unavailable):
        client.ping()
    assert time.monotonic() - t0 < 2
    client.close()
    peer.join(2)


def test_replies_reach_their_callers_by_id_whatever_their_order(tmp_path: Path) -> None:
    held: list[dict[str, object]] = []

    def answer(frame: dict[str, object]) -> bytes:   # hold the first ping, answer both on the second
        held.append(frame)
        if len(held) < 2:
            return b""
        return b"".join(encode_frame({"type": "pong", "id": f["id"], "body": {"pid": i, "cgroup_version": 2}})
                        for i, f in reversed(list(enumerate(held))))

    peer = scripted_peer(tmp_path, answer)
    client = SupervisorClient(tmp_path)
    results: dict[str, int] = {}
    first = threading.Thread(target=lambda: results.__setitem__("first", client.ping().pid))
    first.start()
    while not held:
        time.sleep(0.005)
    results["second"] = client.ping().pid
    first.join(2)
    assert results == {"first": 0, "second": 1}
    client.close()
    peer.join(2)


def test_no_supervisor_is_unavailable(tmp_path: Path) -> None:
    assert not SupervisorClient(tmp_path).alive()


def test_a_forget_not_waited_for_is_sent_in_order_and_its_reply_dropped(tmp_path: Path) -> None:
    seen: list[str] = []

    def answer(frame: dict[str, object]) -> bytes:   # the forget is refused: nobody waits to hear it
        seen.append(str(frame["type"]))
        if frame["type"] == "forget":
            return encode_frame({"type": "error", "id": frame["id"], "body": {"code": "not_found", "message": "x"}})
        return encode_frame({"type": "pong", "id": frame["id"], "body": {"pid": 7, "cgroup_version": 2}})

    peer = scripted_peer(tmp_path, answer)
    client = SupervisorClient(tmp_path)
    client.forget("a" * 32, wait=False)
    assert client.ping().pid == 7   # answered after the forget's (dropped) reply, on the same connection
    assert seen == ["forget", "ping"]
    client.close()
    peer.join(2)


def test_a_job_reply_reads_as_the_checked_decoding_does() -> None:
    from capsa.errors import InvalidArgument
    from capsa.runtime.client import decode_reply
    from capsa.runtime.protocol import START_STAMPS, JobRecord, JobReply, ProcState, decode, encode

    rec = JobRecord("b" * 32, pid=41, state=ProcState.EXITED, exit_code=3, signal=0, reason="x", oom_killed=True,
                    started_ns=5, ended_ns=9, cgroup="/cg", log_dropped_bytes=2,
                    start_stamps={name: n for n, name in enumerate(START_STAMPS)})
    frame = FrameReader().feed(encode_frame(encode(JobReply(rec), 3)))[0]
    assert decode_reply(frame) == decode(frame)[1] == JobReply(rec)
    for bad in ({"job_id": 5}, {"job_id": "c", "state": "flying"}, {"job_id": "c", "start_stamps": [1]}, "x"):
        with pytest.raises(InvalidArgument):
            decode_reply({"type": "job", "id": 1, "body": {"job": bad}})
    ok = FrameReader().feed(encode_frame({"type": "ok", "id": 2, "body": {}}))[0]
    assert decode_reply(ok) == decode(ok)[1]
