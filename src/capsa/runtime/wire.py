"""Length-prefixed JSON messages over Unix sockets, with file descriptors attached.

Used between the daemon, the supervisor and the zygote. A message is a 4-byte
big-endian length followed by UTF-8 JSON; descriptors travel as SCM_RIGHTS with
the first chunk.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

__all__ = ["MAX_MESSAGE", "recv_msg", "send_msg"]

MAX_MESSAGE = 64 << 20
_HEADER = struct.Struct(">I")


def send_msg(sock: socket.socket, payload: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
    data = json.dumps(payload, separators=(",", ":")).encode()
    frame = _HEADER.pack(len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [frame], list(fds))
        if sent < len(frame):
            sock.sendall(frame[sent:])
    else:
        sock.sendall(frame)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks: list[bytes] = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_msg(sock: socket.socket, *, max_fds: int = 8) -> tuple[dict[str, Any] | None, list[int]]:
    """Next message and the descriptors sent with it; ``(None, [])`` at EOF."""
    data, fds, _flags, _addr = socket.recv_fds(sock, _HEADER.size, max_fds)
    if not data:
        for fd in fds:
            _close(fd)
        return None, []
    if len(data) < _HEADER.size:
        rest = _recv_exact(sock, _HEADER.size - len(data))
        if rest is None:
            return None, fds
        data += rest
    (length,) = _HEADER.unpack(data)
    if length > MAX_MESSAGE:
        raise ValueError(f"message of {length} bytes exceeds the {MAX_MESSAGE}-byte limit")
    body = _recv_exact(sock, length)
    if body is None:
        return None, fds
    return json.loads(body), fds


def _close(fd: int) -> None:
    import os

    try:
        os.close(fd)
    except OSError:
        pass
