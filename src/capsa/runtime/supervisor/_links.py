"""The supervisor's non-blocking peers: a daemon connection, the zygote, the kernel's process table.

Nothing here ever blocks the supervisor's loop on a write. Every outgoing byte goes to a
per-peer queue that is flushed as far as the socket takes it and then again when the
selector says it is writable; the loop only asks for writability while a queue is non-empty.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import selectors
import signal
import socket
import subprocess
import sys
from collections import deque
from typing import Protocol

from capsa.errors import CapsaError
from capsa.runtime.protocol import ExitEvent, JobRecord, Message, StageFailed, decode, encode
from capsa.runtime.wire import FrameReader, encode_frame

__all__ = ["Caller", "Connection", "HostProcesses", "Processes", "Zygote", "ZygoteLink"]

# Stop reading a connection's requests while this many reply bytes wait for the peer to read:
# a client that only writes cannot make the supervisor buffer without bound.
REPLY_HIGH_WATER = 4 << 20
# Exit events are serialised lazily, only while the outgoing buffer holds less than this.
EVENT_LOW_WATER = 256 << 10
# A subscriber this far behind is cut off; it resubscribes and reconciles from ``list``
# (exited records stay there until forgotten), so no exit is lost, only re-read.
MAX_PENDING_EVENTS = 1 << 16
_RECV = 1 << 18


class Connection:
    """One daemon connection: requests in (any number, multiplexed by id), replies and events out."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.reader = FrameReader()
        self.out = bytearray()
        self.events: deque[JobRecord] = deque()
        self.subscriber = False
        self.closing = False    # a framing error: send what is queued, then close
        self.closed = False
        self.mask = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def queue(self, msg: Message, request_id: int = 0) -> None:
        if not self.closed:
            self.out += encode_frame(encode(msg, request_id))

    def push_event(self, record: JobRecord) -> bool:
        """Queue an exit event (a snapshot of the record); False if this subscriber is too far behind."""
        if len(self.events) >= MAX_PENDING_EVENTS:
            return False
        self.events.append(dataclasses.replace(record))
        return True

    def flush(self) -> None:
        """Send as much as the socket takes now; raises OSError if the peer is gone."""
        while True:
            while self.events and len(self.out) < EVENT_LOW_WATER:
                self.out += encode_frame(encode(ExitEvent(self.events.popleft())))
            if not self.out:
                return
            try:
                sent = self.sock.send(self.out)
            except BlockingIOError:
                return
            del self.out[:sent]

    def wanted(self) -> int:
        mask = 0
        if not self.closing and len(self.out) < REPLY_HIGH_WATER:
            mask |= selectors.EVENT_READ
        if self.out or self.events:
            mask |= selectors.EVENT_WRITE
        return mask

    def recv(self) -> bytes:
        """Bytes available now (b"" at EOF); raises BlockingIOError if none."""
        return self.sock.recv(_RECV)

    def close(self) -> None:
        self.closed = True
        self.out.clear()
        self.events.clear()
        self.sock.close()


@dataclasses.dataclass(frozen=True)
class Caller:
    """Where a request came from, to answer it later (a start is answered at exec): see ``Supervisor.answer``."""

    conn: Connection
    request_id: int


class Zygote(Protocol):
    """The fork server, as the supervisor uses it (tests inject an in-process fake)."""

    pid: int

    def spawn(self) -> None: ...

    def submit(self, msg: Message, fds: list[int]) -> None:
        """Queue ``msg`` with ``fds`` attached; takes ownership of (closes) the descriptors."""

    def flush(self) -> None: ...

    def wants_write(self) -> bool: ...

    def fileno(self) -> int: ...

    def stop(self) -> None: ...

    def kill(self) -> None:
        """Kill a wedged zygote; its exit (SIGCHLD) brings a successor."""


class ZygoteLink:
    """The real zygote: a fresh ``python -m capsa`` (CAPSA_ROLE=zygote) on a socketpair.

    exec'ing rather than forking means a zygote can be (re)started at any time, even though
    the supervisor runs threads, and it carries only the modules job starts need. Orders wait
    in a queue when the zygote's socket is full, so a busy zygote delays starts, never the loop.
    """

    def __init__(self) -> None:
        self.pid = 0
        self.sock: socket.socket | None = None
        self._queue: deque[tuple[bytes, list[int]]] = deque()
        self._head_sent = 0   # bytes of the queue's first frame already sent (its fds went with byte 0)

    def spawn(self) -> None:
        if self.sock is not None:
            self.sock.close()
            if self._head_sent and self._queue:
                # Half of this order reached the dead zygote and its fds went along: that start
                # sees its report pipe close and fails; the orders behind it go to the new one.
                self._queue.popleft()
        self._head_sent = 0
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ, CAPSA_ROLE="zygote", CAPSA_ZYGOTE_FD=str(child.fileno()))
        proc = subprocess.Popen([sys.executable, "-m", "capsa"], env=env, pass_fds=(child.fileno(),),
                                stdin=subprocess.DEVNULL, close_fds=True)
        child.close()
        parent.setblocking(False)
        self.pid, self.sock = proc.pid, parent
        # Popen's own bookkeeping would race the supervisor's waitpid(-1); it reaps the zygote itself.
        proc.returncode = 0

    def submit(self, msg: Message, fds: list[int]) -> None:
        self._queue.append((encode_frame(encode(msg)), fds))
        self.flush()

    def flush(self) -> None:
        while self._queue and self.sock is not None:
            frame, fds = self._queue[0]
            try:
                if self._head_sent == 0 and fds:
                    sent = socket.send_fds(self.sock, [frame], fds)
                    for fd in fds:   # the zygote holds its own copies now
                        os.close(fd)
                    self._queue[0] = (frame, [])
                else:
                    sent = self.sock.send(frame[self._head_sent:])
            except BlockingIOError:
                return
            except OSError:
                return   # the zygote is gone; SIGCHLD brings a respawn, which resends the queue
            self._head_sent += sent
            if self._head_sent >= len(frame):
                self._queue.popleft()
                self._head_sent = 0

    def wants_write(self) -> bool:
        return bool(self._queue)

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.kill(self.pid, 9)
        for _frame, fds in self._queue:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._queue.clear()


class Processes(Protocol):
    """Reaping and pidfds (tests inject a fake process table)."""

    def reap(self) -> list[tuple[int, int]]:
        """Every child that exited since the last call, as (pid, wait status)."""

    def pidfd(self, pid: int) -> int: ...


class HostProcesses:
    def reap(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return out
            if pid == 0:
                return out
            out.append((pid, status))

    def pidfd(self, pid: int) -> int:
        return os.pidfd_open(pid)


def read_ready(fd: int, size: int = 65536) -> bytes | None:
    """One non-blocking read: the bytes; ``b""`` at EOF or on a read error (the peer is gone either way);
    None when nothing is there now."""
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def report_messages(reader: FrameReader, data: bytes, what: str) -> list[Message]:
    """The messages a stage-one/two report pipe delivered in ``data`` (for a job start or an exec).

    A frame that cannot be read becomes a ``StageFailed`` in its place, so the caller's one rule —
    keep the first failure — also covers a garbled pipe.
    """
    try:
        frames = reader.feed(data)
    except CapsaError as exc:
        return [StageFailed("report", 0, f"unreadable {what} report: {exc}")]
    messages: list[Message] = []
    for frame in frames:
        try:
            _id, msg = decode(frame)
        except CapsaError as exc:
            msg = StageFailed("report", 0, f"unreadable {what} report: {exc}")
        messages.append(msg)
    return messages
