"""The supervisor's event loop: accept, read frames, dispatch typed requests, write without blocking.

A request handler is a method marked ``@handles(SomeRequest)``; it returns its reply, or
``None`` when it answers later through the ``Caller`` (a start is answered at exec, a mount
when the zygote is done). Decoding and ``validate()`` run before the handler, so handlers see
only well-typed, in-range requests. Whatever a handler raises becomes an ``ErrorReply`` —
a ``CapsaError`` with its own code, anything else as ``internal`` plus one log line — and the
loop goes on: no request can take the supervisor (and every running job's output) down.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from capsa.errors import CapsaError, InvalidArgument
from capsa.runtime._codec import frame_id
from capsa.runtime.protocol import ErrorReply, Message, decode, error_reply
from capsa.runtime.supervisor._links import Caller, Connection, Zygote
from capsa.runtime.wire import FrameError

__all__ = ["EventLoop", "handles"]

LISTEN_BACKLOG = 4096
_HANDLES = "_capsa_handles"
F = TypeVar("F", bound=Callable[..., Any])


def handles(request_type: type[Message]) -> Callable[[F], F]:
    """Register the decorated method as the handler of ``request_type``."""
    def mark(fn: F) -> F:
        setattr(fn, _HANDLES, request_type)
        return fn
    return mark


class EventLoop:
    """Sockets, frames, dispatch and the wake-up pipe; the job logic lives in the subclass."""

    def __init__(self, sock_path: Path, zygote: Zygote) -> None:
        self.sock_path = sock_path
        self.zygote = zygote
        self.sel = selectors.DefaultSelector()
        self.running = True
        self.subscribers: set[Connection] = set()
        # Connections with something to send or a new interest mask, handled once at the end of each
        # step: the replies and exit events of one step leave in one send(2) per connection.
        self._dirty: dict[Connection, None] = {}
        self._zygote_registered = -1
        self.handlers: dict[type[Message], Callable[[Any, Caller], Message | None]] = {}
        for klass in reversed(type(self).__mro__):
            for name, fn in vars(klass).items():
                request_type = getattr(fn, _HANDLES, None)
                if request_type is not None:
                    self.handlers[request_type] = getattr(self, name)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))

    # -- set-up --------------------------------------------------------------------------------
    def listen(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.sock_path))
        os.chmod(self.sock_path, 0o600)
        # The kernel caps this at net.core.somaxconn; a burst of connects then waits in the
        # queue instead of failing with EAGAIN while the loop is busy.
        listener.listen(LISTEN_BACKLOG)
        listener.setblocking(False)
        self.listener = listener
        self.sel.register(listener, selectors.EVENT_READ, ("listen", None))

    def install_signals(self) -> None:
        """SIGCHLD/SIGTERM/SIGINT wake the loop through the wake-up pipe (main thread only)."""
        signal.set_wakeup_fd(self._wake_w)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)

    def wake(self) -> None:
        """Make the loop look at child exits now (byte 0 is no signal; tests and fakes use it)."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")

    # -- the loop ----------------------------------------------------------------------------------
    def serve(self) -> None:
        while self.running:
            self.step(self.next_timeout())
        self.on_shutdown()

    def step(self, timeout: float | None) -> None:
        for key, mask in self.sel.select(timeout):
            try:
                self._on_ready(key, mask)
            except Exception as exc:   # a bug in one callback must not end supervision of every job
                self.log(f"error handling {key.data[0]}: {type(exc).__name__}: {exc}")
        try:
            self.run_deadlines()
        except Exception as exc:
            self.log(f"error running deadlines: {type(exc).__name__}: {exc}")
        self.flush_dirty()
        self._sync_zygote()

    def flush_dirty(self) -> None:
        """Send what this step queued, one connection at a time (see ``update``)."""
        dirty = self._dirty
        while dirty:
            conn = next(iter(dirty))
            del dirty[conn]
            try:
                self._update_now(conn)
            except Exception as exc:   # as for any callback: one connection's trouble ends no supervision
                self.log(f"error handling conn: {type(exc).__name__}: {exc}")

    def _on_ready(self, key: selectors.SelectorKey, mask: int) -> None:
        kind, data = key.data
        if kind == "conn":
            self._on_conn(data, mask)
        elif kind == "listen":
            self._accept()
        elif kind == "wake":
            self._on_wake()
        elif kind == "zygote":
            self.zygote.flush()
        else:
            self.on_fd(kind, key.fd)

    def _on_wake(self) -> None:
        try:
            data = os.read(self._wake_r, 512)
        except BlockingIOError:
            data = b""
        if signal.SIGTERM in data or signal.SIGINT in data:
            self.running = False
        self.on_children()

    def _sync_zygote(self) -> None:
        fd = self.zygote.fileno() if self.zygote.wants_write() else -1
        if fd == self._zygote_registered:
            return
        if self._zygote_registered != -1:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.sel.unregister(self._zygote_registered)
        if fd != -1:
            self.sel.register(fd, selectors.EVENT_WRITE, ("zygote", None))
        self._zygote_registered = fd

    def forget_zygote_fd(self) -> None:
        """The zygote's socket is about to close (respawn): drop its registration first."""
        if self._zygote_registered != -1:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.sel.unregister(self._zygote_registered)
            self._zygote_registered = -1

    # -- connections ---------------------------------------------------------------------------------
    def _accept(self) -> None:
        while True:   # everything pending: a burst is accepted in one wake-up
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:   # EMFILE and friends: the rest stay queued for the next wake-up
                self.log(f"accept failed: {exc}")
                return
            conn = Connection(sock)
            conn.mask = selectors.EVENT_READ
            self.sel.register(conn.sock, conn.mask, ("conn", conn))

    def _on_conn(self, conn: Connection, mask: int) -> None:
        if conn.closed:
            return
        try:
            if mask & selectors.EVENT_READ:
                try:
                    data = conn.recv()
                except BlockingIOError:
                    data = None
                if data == b"":
                    self.drop(conn)
                    return
                if data:
                    self._on_bytes(conn, data)
            self.update(conn)
        except OSError:
            self.drop(conn)

    def _on_bytes(self, conn: Connection, data: bytes) -> None:
        try:
            frames = conn.reader.feed(data)
        except FrameError as exc:
            conn.queue(ErrorReply(InvalidArgument.code, str(exc)))
            conn.closing = True   # no way to find the next frame boundary
            return
        for frame in frames:
            request_id = frame_id(frame)
            try:
                request_id, request = decode(frame)
                handler = self.handlers.get(type(request))
                if handler is None:
                    raise InvalidArgument(f"{request.TYPE!r} is not a request")
                request.validate()
                reply = handler(request, Caller(conn, request_id))
            except Exception as exc:
                if not isinstance(exc, CapsaError):
                    self.log(f"request {frame.get('type')!r} failed: {type(exc).__name__}: {exc}")
                reply = error_reply(exc)
            if reply is not None:
                self._queue_reply(conn, reply, request_id)

    def _queue_reply(self, conn: Connection, reply: Message, request_id: int) -> None:
        try:
            conn.queue(reply, request_id)
        except CapsaError as exc:   # e.g. a reply larger than a frame may be
            self.log(f"reply {reply.TYPE!r} could not be framed: {exc}")
            conn.queue(ErrorReply("internal", f"the reply could not be sent: {exc}"), request_id)

    def update(self, conn: Connection) -> None:
        """Send what ``conn`` has queued and listen for what it needs next, at the end of this step.

        Deferred so that a step's replies and events go out together: during a burst a step
        answers several starts and publishes several exits, and each send(2) costs the supervisor
        a system call and the daemon a wake-up of its reader thread.
        """
        if not conn.closed:
            self._dirty[conn] = None

    def _update_now(self, conn: Connection) -> None:
        if conn.closed:
            return
        try:
            conn.flush()
        except OSError:
            self.drop(conn)
            return
        self.on_flushed(conn)
        if conn.closing and not conn.out and not conn.events:
            self.drop(conn)
            return
        mask = conn.wanted()
        if mask != conn.mask:
            if mask:
                self.sel.modify(conn.sock, mask, ("conn", conn))
            conn.mask = mask

    def drop(self, conn: Connection) -> None:
        if conn.closed:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn.sock)
        self.subscribers.discard(conn)
        conn.close()
        self.on_conn_closed(conn)

    def publish(self, record: Any) -> None:
        """An exit event to every subscriber, through its queue (never a blocking send)."""
        for conn in list(self.subscribers):
            if conn.push_event(record):
                self.update(conn)
            else:
                self.log("an event subscriber fell too far behind; closing it (it reconciles from list)")
                self.drop(conn)

    def flush_all(self) -> None:
        """Best effort at shutdown: hand the last replies to the kernel."""
        for key in list(self.sel.get_map().values()):
            if key.data[0] == "conn":
                with contextlib.suppress(OSError):
                    key.data[1].flush()

    # -- for the subclass -----------------------------------------------------------------------------
    def next_timeout(self) -> float | None:
        return None

    def run_deadlines(self) -> None:
        pass

    def on_children(self) -> None:
        pass

    def on_fd(self, kind: str, fd: int) -> None:
        raise NotImplementedError

    def on_shutdown(self) -> None:
        pass

    def on_flushed(self, conn: Connection) -> None:
        """``conn``'s queue was flushed as far as the socket took it (streamed execs resume reading)."""

    def on_conn_closed(self, conn: Connection) -> None:
        """``conn`` is gone (streamed execs it asked for lose their caller)."""

    def log(self, message: str) -> None:
        print(f"capsa-supervisor: {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)
