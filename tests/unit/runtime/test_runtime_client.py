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
