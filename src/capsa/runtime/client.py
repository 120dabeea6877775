"""The daemon's side of the supervisor: spawn it if needed, talk to it.

Requests from every thread share one persistent connection: each request frame carries an
id, a reader thread hands each reply to the thread waiting for that id. No connection per
call means no burst of connects to overflow the supervisor's accept queue, and a slow
request (a start waits for the exec) never holds up the others. Exit events arrive on a
second, dedicated connection read by the event thread, so a slow event consumer can
never delay a reply — and the supervisor queues events without blocking (ADR-0010).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from capsa.errors import CapsaError, Unavailable
from capsa.runtime._codec import frame_id
from capsa.runtime.protocol import (
    ErrorReply,
    ExecReply,
    ExecRequest,
    ExitEvent,
    ForgetRequest,
    InputReply,
    InputRequest,
    JobRecord,
    JobReply,
    ListReply,
    ListRequest,
    Message,
    MountRequest,
    OkReply,
    PingReply,
    PingRequest,
    ProcState,
    ResizeRequest,
    ShutdownRequest,
    SignalRequest,
    StartFailed,
    StartFailedError,
    StartRequest,
    StopRequest,
    SubscribeRequest,
    decode,
    encode,
)
from capsa.runtime.spec import JobSpec
from capsa.runtime.wire import FrameReader, encode_frame

__all__ = ["SupervisorClient", "ensure_supervisor"]

log = logging.getLogger("capsa.runtime")

R = TypeVar("R", bound=Message)

REQUEST_TIMEOUT_S = 60.0
# The supervisor answers every start by its own deadline (START_TIMEOUT_S, 120 s): waiting
# longer than that here means it is wedged, never that a start is merely slow.
START_WAIT_S = 180.0
_RECV = 1 << 18


def _connect(path: Path, timeout: float) -> socket.socket:
    """A blocking connection; a full accept queue makes connect wait (up to ``timeout``), not fail.

    (Python's own connect timeout puts the socket in non-blocking mode, where an AF_UNIX
    connect to a full queue fails at once with EAGAIN; SO_SNDTIMEO bounds the kernel's wait.)
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    timeval = struct.pack("ll", int(timeout), int((timeout % 1) * 1e6))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        sock.connect(str(path))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 0))
    except OSError as exc:
        sock.close()
        raise Unavailable(f"supervisor not reachable at {path}: {exc.strerror or exc}") from exc
    return sock


_RECORD_FIELDS = frozenset(f.name for f in dataclasses.fields(JobRecord))


def decode_reply(frame: dict[str, object]) -> Message:
    """A reply of the supervisor this daemon talks to: ``decode``, with the one per-job reply (a
    job record) built directly from its fields. The supervisor is this program, started by us; a
    record that is not what it always sends (or any other message) goes the checked way."""
    body = frame.get("body")
    if frame.get("type") == "job" and isinstance(body, dict):
        data = body.get("job")
        if isinstance(data, dict) and isinstance(data.get("job_id"), str) \
                and isinstance(data.get("start_stamps", {}), dict):
            with contextlib.suppress(TypeError, ValueError):
                values = {k: v for k, v in data.items() if k in _RECORD_FIELDS}
                values["state"] = ProcState(values.get("state", ProcState.STARTING.value))
                return JobReply(JobRecord(**values))
    return decode(frame)[1]


class _Waiter:
    __slots__ = ("done", "error", "reply")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: Message | None = None
        self.error = ""


class _Channel:
    """One connection multiplexed between threads by request id."""

    def __init__(self, path: Path, connect_timeout: float) -> None:
        self.sock = _connect(path, connect_timeout)
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._waiters: dict[int, _Waiter] = {}
        self._ids = itertools.count(1)
        self.dead = ""
        self._reader = threading.Thread(target=self._read, name="supervisor-replies", daemon=True)
        self._reader.start()

    def call(self, request: Message, timeout: float | None) -> Message:
        waiter = _Waiter()
        with self._lock:
            if self.dead:
                raise Unavailable(self.dead)
            request_id = next(self._ids)
            self._waiters[request_id] = waiter
        try:
            frame = encode_frame(encode(request, request_id))
            with self._send_lock:
                self.sock.sendall(frame)
        except OSError as exc:
            self._fail(f"supervisor connection failed during {request.TYPE!r}: {exc}")
        except BaseException:
            with self._lock:
                self._waiters.pop(request_id, None)
            raise
        if not waiter.done.wait(timeout):
            with self._lock:
                self._waiters.pop(request_id, None)
            raise Unavailable(f"supervisor did not answer {request.TYPE!r} in {timeout}s")
        if waiter.reply is None:
            raise Unavailable(waiter.error)
        return waiter.reply

    def send(self, request: Message) -> None:
        """Send ``request`` without waiting: its reply, even an error, is read and dropped (its id
        has no waiter). Requests on this connection are answered in order, so a later call still
        sees its effect."""
        with self._lock:
            if self.dead:
                raise Unavailable(self.dead)
            request_id = next(self._ids)
        frame = encode_frame(encode(request, request_id))
        try:
            with self._send_lock:
                self.sock.sendall(frame)
        except OSError as exc:
            self._fail(f"supervisor connection failed during {request.TYPE!r}: {exc}")
            raise Unavailable(self.dead) from exc

    def _read(self) -> None:
        reader = FrameReader()
        try:
            while True:
                data = self.sock.recv(_RECV)
                if not data:
                    break
                for frame in reader.feed(data):
                    request_id = frame_id(frame)
                    with self._lock:
                        waiter = self._waiters.pop(request_id, None)
                    if waiter is None:   # its caller gave up waiting, or sent without waiting: not read
                        continue
                    try:
                        waiter.reply = decode_reply(frame)
                    except CapsaError as exc:   # ends the channel; this caller is out of its table already
                        waiter.error = f"supervisor connection failed: {exc}"
                        raise
                    finally:
                        waiter.done.set()
        except (OSError, ValueError, CapsaError) as exc:   # a frame we cannot read ends the channel
            self._fail(f"supervisor connection failed: {exc}")
            return
        self._fail("supervisor closed the connection")

    def _fail(self, reason: str) -> None:
        with self._lock:
            self.dead = self.dead or reason
            waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            waiter.error = reason
            waiter.done.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._fail("supervisor client closed")
        self.sock.close()


class SupervisorClient:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.sock_path = home / "run" / "supervisor.sock"
        self._channel: _Channel | None = None
        self._channel_lock = threading.Lock()
        self._sub_thread: threading.Thread | None = None
        self._sub_sock: socket.socket | None = None
        self._closing = False

    # -- requests ---------------------------------------------------------------------------
    def request(self, request: Message, expect: type[R], *, timeout: float | None = REQUEST_TIMEOUT_S) -> R:
        """Send one typed request; its reply if it is an ``expect``, else the error it carries, raised."""
        reply = self._channel_for(timeout).call(request, timeout)
        if isinstance(reply, expect):
            return reply
        if isinstance(reply, ErrorReply):
            raise reply.to_exception()
        if isinstance(reply, StartFailed):
            raise StartFailedError(reply)
        raise CapsaError(f"supervisor answered {request.TYPE!r} with {reply.TYPE!r}")

    def _channel_for(self, timeout: float | None) -> _Channel:
        with self._channel_lock:
            if self._channel is None or self._channel.dead:
                if self._channel is not None:   # a supervisor restarted under us: reconnect
                    self._channel.close()
                self._channel = None
                self._channel = _Channel(self.sock_path, min(timeout or 10.0, 10.0))
            return self._channel

    def ping(self) -> PingReply:
        return self.request(PingRequest(), PingReply, timeout=5)

    def alive(self) -> bool:
        try:
            self.ping()
        except CapsaError:
            return False
        return True

    def start(self, spec: JobSpec, *, submitted_ns: int = 0, recorded_ns: int = 0) -> JobRecord:
        """The job's record once its command was exec'd; ``StartFailedError`` if it never was.

        ``submitted_ns``/``recorded_ns``: the caller's CLOCK_MONOTONIC stamps of the submission and
        of its record, kept in the record's ``start_stamps`` beside the supervisor's own.
        """
        request = StartRequest(spec, submitted_ns, recorded_ns)
        return self.request(request, JobReply, timeout=START_WAIT_S).job

    def stop(self, job_id: str, grace_s: float) -> JobRecord:
        return self.request(StopRequest(job_id, grace_s), JobReply).job

    def signal(self, job_id: str, signo: int) -> JobRecord:
        return self.request(SignalRequest(job_id, signo), JobReply).job

    def list(self) -> list[JobRecord]:
        return list(self.request(ListRequest(), ListReply).jobs)

    def forget(self, job_id: str, *, wait: bool = True) -> None:
        """Drop the supervisor's record of an ended job. ``wait=False``: send it and go on (the exit
        path: its caller ignores errors, and the reply would cost a thread hand-off per job)."""
        if wait:
            self.request(ForgetRequest(job_id), OkReply)
        else:
            self._channel_for(REQUEST_TIMEOUT_S).send(ForgetRequest(job_id))

    def mount(self, job_id: str, action: str, *, target: str, source: str = "", create_target: bool = True) -> None:
        """attach | swap | detach a read-only mount in a running job (done by the zygote, see mounts.py)."""
        self.request(MountRequest(job_id, action, target, source, create_target), OkReply)

    def exec(self, job_id: str, argv: tuple[str, ...], *, env: tuple[str, ...] = (), uid: int = -1,
             gid: int = -1, workdir: str = "") -> ExecReply:
        """Run ``argv`` inside a running job and wait for its end (``StartFailedError`` if never exec'd).

        No timeout: the supervisor answers when the process exits, which it does at the latest
        with its job; a supervisor that goes away fails the wait.
        """
        return self.request(ExecRequest(job_id, tuple(argv), tuple(env), uid, gid, workdir), ExecReply, timeout=None)

    def input(self, job_id: str, data: bytes = b"", *, eof: bool = False, exec_id: int = 0) -> InputReply:
        """Write to a ``-i``/``-t`` job's (or streamed exec's) stdin what it takes now (``accepted``);
        ``eof`` closes a pipe after it."""
        import base64

        return self.request(InputRequest(job_id, base64.b64encode(data).decode(), eof, exec_id), InputReply)

    def resize(self, job_id: str, rows: int, cols: int, *, exec_id: int = 0) -> None:
        """Set a ``-t`` job's (or streamed exec's) terminal size."""
        self.request(ResizeRequest(job_id, rows, cols, exec_id), OkReply)

    def shutdown(self) -> None:
        with contextlib.suppress(CapsaError):
            self.request(ShutdownRequest(), OkReply, timeout=5)

    # -- events -------------------------------------------------------------------------------
    def subscribe(self, on_event: Callable[[ExitEvent], None],
                  on_lost: Callable[[], None] | None = None) -> None:
        """Deliver exit events to ``on_event`` from a background thread.

        ``on_event`` may call this client (``forget`` and the like): replies come on the request
        connection, read by another thread, and the supervisor never waits for this one.
        """
        sock = _connect(self.sock_path, 10.0)
        reader = FrameReader()
        try:
            sock.sendall(encode_frame(encode(SubscribeRequest(), 1)))
            sock.settimeout(10.0)
            frames: list[dict[str, object]] = []
            while not frames:
                data = sock.recv(_RECV)
                if not data:
                    raise Unavailable("supervisor closed the event subscription")
                frames = reader.feed(data)
            sock.settimeout(None)
            if not isinstance(decode(frames[0])[1], OkReply):
                raise Unavailable("supervisor refused the event subscription")
        except (OSError, ValueError, CapsaError) as exc:
            sock.close()
            raise Unavailable(f"event subscription failed: {exc}") from exc
        except BaseException:
            sock.close()
            raise
        self._sub_sock = sock
        backlog = frames[1:]

        def pump() -> None:
            pending = backlog
            while True:
                for frame in pending:
                    self._deliver(frame, on_event)
                try:
                    data = sock.recv(_RECV)
                    pending = reader.feed(data) if data else []
                except (OSError, ValueError, CapsaError):
                    data = b""
                if not data:
                    if on_lost is not None and not self._closing:
                        on_lost()
                    return

        self._sub_thread = threading.Thread(target=pump, name="supervisor-events", daemon=True)
        self._sub_thread.start()

    @staticmethod
    def _deliver(frame: dict[str, object], on_event: Callable[[ExitEvent], None]) -> None:
        try:
            _id, msg = decode(frame)
            if isinstance(msg, ExitEvent):
                on_event(msg)
        except Exception:   # one bad event or handler bug must not end the subscription
            log.exception("handling a supervisor event failed")

    def close(self) -> None:
        self._closing = True
        if self._sub_sock is not None:
            with contextlib.suppress(OSError):
                self._sub_sock.shutdown(socket.SHUT_RDWR)
            self._sub_sock.close()
            self._sub_sock = None
        with self._channel_lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None


def ensure_supervisor(home: Path, *, timeout: float = 15.0) -> tuple[SupervisorClient, bool]:
    """Connect to a running supervisor or start one; returns (client, started_now).

    The supervisor is the same program started with ``CAPSA_ROLE=supervisor``,
    in a new session so a crash of the daemon does not take it (and the jobs'
    output pipes) down.
    """
    client = SupervisorClient(home)
    if client.alive():
        return client, False
    run_dir = home / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    pid_file = run_dir / "supervisor.pid"
    if pid_file.exists():  # a previous supervisor that no longer answers must not linger
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text())
            if _is_supervisor(pid):
                os.kill(pid, signal.SIGKILL)
    env = dict(os.environ, CAPSA_ROLE="supervisor", CAPSA_HOME=str(home))
    log_file = open(run_dir / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        subprocess.Popen([sys.executable, "-m", "capsa"], env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                         stderr=log_file, start_new_session=True, close_fds=True)
    finally:
        log_file.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.alive():
            return client, True
        time.sleep(0.02)
    raise Unavailable(f"supervisor did not start within {timeout}s; see {run_dir / 'supervisor.log'}")


def _is_supervisor(pid: int) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return b"CAPSA_ROLE=supervisor" in environ

