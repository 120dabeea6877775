"""A streamed exec from the daemon's event loop: one connection to the supervisor per exec (ADR-0013).

The request/reply channel of :mod:`capsa.runtime.client` pairs one reply with one request; a
streamed exec answers many frames (``ExecStarted``, ``ExecOutput``…, then ``ExecReply``) and lives
as long as its caller, which the supervisor learns from this connection closing. So each streamed
exec has a connection of its own, read with asyncio: no thread is held while the process is quiet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from capsa.errors import CapsaError, Unavailable
from capsa.runtime.protocol import ErrorReply, ExecReply, ExecRequest, Message, StartFailed, decode, encode
from capsa.runtime.wire import FrameReader, encode_frame

__all__ = ["exec_stream"]

_READ = 1 << 18


async def exec_stream(sock_path: Path, request: ExecRequest) -> AsyncIterator[Message]:
    """The supervisor's frames for ``request`` (sent with ``stream=True``), up to and with the last one.

    The last is ``ExecReply``, ``StartFailed`` or ``ErrorReply``; leaving the iteration early closes
    the connection, which ends the exec's input (see ``ExecRequest``).
    """
    try:
        reader, writer = await asyncio.open_unix_connection(str(sock_path))
    except OSError as exc:
        raise Unavailable(f"supervisor not reachable at {sock_path}: {exc.strerror or exc}") from exc
    try:
        writer.write(encode_frame(encode(request, 1)))
        await writer.drain()
        frames = FrameReader()
        while True:
            data = await reader.read(_READ)
            if not data:
                raise Unavailable("the supervisor closed the exec's connection")
            for frame in frames.feed(data):
                _id, msg = decode(frame)
                yield msg
                if isinstance(msg, (ExecReply, StartFailed, ErrorReply)):
                    return
    except (OSError, ValueError) as exc:
        raise Unavailable(f"exec stream from the supervisor failed: {exc}") from exc
    finally:
        writer.close()
        with contextlib.suppress(OSError, CapsaError):
            await writer.wait_closed()
