"""The one framing of every runtime message: a 4-byte big-endian length, then UTF-8 JSON.

Used on every channel between the daemon, the supervisor, the zygote and stage one/two:
Unix sockets (descriptors travel as SCM_RIGHTS with the first chunk) and pipes (a frame
below ``PIPE_BUF`` written with one ``write`` is atomic, so stage one and stage two can
share the report pipe). The JSON object is a typed message (:mod:`capsa.runtime.protocol`).

Blocking helpers (``send_msg``/``recv_msg``/``write_frame``) serve the single-purpose
peers; the supervisor's non-blocking loop parses with :class:`FrameReader`.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

from capsa.errors import InvalidArgument

__all__ = ["MAX_MESSAGE", "FrameError", "FrameReader", "encode_frame", "recv_msg", "send_msg", "write_frame"]

MAX_MESSAGE = 64 << 20   # a list of every job the supervisor holds must fit
_HEADER = struct.Struct(">I")


class FrameError(InvalidArgument):
    """The byte stream is not a sequence of frames (too large, not JSON); it cannot be resynchronised."""


def encode_frame(payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise InvalidArgument(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE}-byte limit")
    return _HEADER.pack(len(data)) + data


def _parse(body: bytes | bytearray | memoryview) -> dict[str, Any]:
    try:
        payload = json.loads(bytes(body))
    except ValueError as exc:   # UnicodeDecodeError is a ValueError too
        raise FrameError(f"frame is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise FrameError("frame is not a JSON object")
    return payload


class FrameReader:
    """Incremental parser for a non-blocking reader: ``feed`` bytes, get the whole frames so far."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self.max_message = max_message
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        frames: list[dict[str, Any]] = []
        pos = 0
        while len(self._buf) - pos >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buf, pos)
            if length > self.max_message:
                raise FrameError(f"frame of {length} bytes exceeds the {self.max_message}-byte limit")
            end = pos + _HEADER.size + length
            if len(self._buf) < end:
                break
            frames.append(_parse(memoryview(self._buf)[pos + _HEADER.size:end]))
            pos = end
        if pos:
            del self._buf[:pos]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame (a stream that ends with some was cut mid-frame)."""
        return len(self._buf)


def send_msg(sock: socket.socket, payload: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
    """Blocking send of one frame, ``fds`` attached to its first chunk."""
    frame = encode_frame(payload)
    if fds:
        sent = socket.send_fds(sock, [frame], list(fds))
        if sent < len(frame):
            sock.sendall(frame[sent:])
    else:
        sock.sendall(frame)


def write_frame(fd: int, payload: dict[str, Any]) -> None:
    """One frame on a pipe with one ``write`` (atomic below PIPE_BUF, which report frames are)."""
    frame = encode_frame(payload)
    while frame:
        frame = frame[os.write(fd, frame):]


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
    """Blocking: the next frame and the descriptors sent with it; ``(None, [])`` at EOF."""
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
        raise FrameError(f"frame of {length} bytes exceeds the {MAX_MESSAGE}-byte limit")
    body = _recv_exact(sock, length)
    if body is None:
        return None, fds
    return _parse(body), fds


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
