"""The client's side of ``capsa run -i/-t`` and ``capsa attach``: stdin up, output down, the terminal.

One ``Attach`` call carries everything. A thread reads stdin (raw bytes; with a terminal, raw
mode, so Ctrl-C is the byte 0x03 and reaches the job as SIGINT through *its* terminal) and puts
input messages on a queue the call consumes; SIGWINCH puts a resize there. The detach sequence
(Ctrl-P Ctrl-Q unless ``--detach-keys``) ends the call and leaves the job running. The terminal's
modes are restored on every way out: the job's end, detach, an error, Ctrl-C, SIGTERM/SIGHUP.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import signal
import struct
import sys
import termios
import threading
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from capsa.errors import InvalidArgument

__all__ = ["DEFAULT_DETACH_KEYS", "ClientSignal", "DetachScanner", "Session", "parse_detach_keys", "terminal_size"]

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"
_READ = 1 << 14
_DETACH_FLUSH_S = 2.0     # how long a detach waits for the daemon to end the call (one that stopped reading)


def parse_detach_keys(spec: str) -> bytes:
    """Docker's syntax: comma-separated ``ctrl-<letter>`` (also ctrl-@ ctrl-[ ctrl-\\ ctrl-] ctrl-^ ctrl-_)
    or single characters, e.g. ``ctrl-p,ctrl-q`` or ``ctrl-a,d``; "" turns detaching off."""
    if not spec:
        return b""
    out = bytearray()
    for key in spec.split(","):
        if len(key) == 1:
            out.append(ord(key))
        elif key.lower().startswith("ctrl-") and len(key) == 6:
            ch = key[5].lower()
            if "a" <= ch <= "z":
                out.append(ord(ch) - ord("a") + 1)
            elif ch in "@[\\]^_":
                out.append(ord(ch) - 64)
            else:
                raise InvalidArgument(f"--detach-keys: {key!r} is not a control key")
        else:
            raise InvalidArgument(f"--detach-keys: {key!r} is not ctrl-<letter> or one character")
    return bytes(out)


class DetachScanner:
    """Finds the detach sequence in typed input; bytes that may start it are held until it is decided."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self.held = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes to send now, detach?)."""
        if not self.keys:
            return data, False
        out = bytearray()
        for b in data:
            candidate = self.held + bytes([b])
            if self.keys.startswith(candidate):
                if candidate == self.keys:
                    self.held = b""
                    return bytes(out), True
                self.held = candidate
                continue
            out += self.held
            self.held = b""
            if self.keys.startswith(bytes([b])):
                self.held = bytes([b])
            else:
                out.append(b)
        return bytes(out), False


def terminal_size(fd: int) -> tuple[int, int]:
    """(rows, cols) of the terminal on ``fd``; (0, 0) when it is none."""
    try:
        rows, cols, _x, _y = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return 0, 0
    return rows, cols


@dataclass
class Outcome:
    detached: bool = False
    ended: Any = None   # the last AttachOutput (ended=True), when the job ended while attached


class ClientSignal(BaseException):
    """SIGTERM/SIGHUP in the client: unwind through the finally blocks that restore the terminal."""


class Session:
    """One attachment (or streamed exec). ``run()`` returns once the job (process) ended or the user detached.

    ``open_call(inputs)`` starts the call (``Attach`` or ``ExecStream``) on an iterator of input
    messages; ``first(rows, cols)`` is its first message; ``input_type`` makes the others (both
    input types have ``stdin``, ``stdin_eof``, ``rows``, ``cols``; both outputs ``data``, ``stream``,
    ``tty``, ``ended``).
    """

    def __init__(self, client: Any, open_call: Callable[[Iterator[Any]], Any], first: Callable[[int, int], Any],
                 input_type: Any, *, stdin: bool, detach_keys: bytes) -> None:
        self.client = client
        self.open_call = open_call
        self.first = first
        self.input_type = input_type
        self.want_stdin = stdin
        self.scanner = DetachScanner(detach_keys)
        self.inputs: queue.Queue[Any] = queue.Queue()
        self.detached = threading.Event()
        self._over = threading.Event()   # run() is returning: a detach needs no cancel of its own
        self.call: Any = None

    def _messages(self) -> Iterator[Any]:
        while True:
            msg = self.inputs.get()
            if msg is None:
                return
            yield msg

    def run(self) -> Outcome:
        from capsa.api.errors import from_rpc_error

        in_fd = sys.stdin.fileno()
        is_tty = os.isatty(in_fd)
        rows, cols = terminal_size(in_fd) if is_tty else (0, 0)
        self.inputs.put(self.first(rows, cols))
        self.call = self.open_call(self._messages())
        saved = None
        old_handlers: dict[int, Any] = {}
        outcome = Outcome()
        out = sys.stdout.buffer
        try:
            import grpc

            responses = iter(self.call)
            first = next(responses)
            job_tty = bool(first.tty)
            # A terminal job fed from a pipe (`capsa attach JOB < script`) is fine: the bytes go to its
            # terminal as typed. `run -it`/`exec -it` refuse a non-terminal stdin before they start.
            for sig in (signal.SIGTERM, signal.SIGHUP):
                old_handlers[sig] = signal.signal(sig, _raise_restore)
            if job_tty and is_tty:
                old_handlers[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, lambda *_: self._resize(in_fd))
                if self.want_stdin:   # -t alone sends no input: Ctrl-C stays the client's own
                    saved = termios.tcgetattr(in_fd)
                    tty.setraw(in_fd, termios.TCSANOW)
            if self.want_stdin:
                threading.Thread(target=self._read_stdin, args=(in_fd, job_tty and is_tty), daemon=True,
                                 name="stdin").start()
            try:
                for msg in responses:
                    if msg.ended:
                        outcome.ended = msg
                        break
                    target = out if msg.stream != 2 else sys.stderr.buffer
                    target.write(msg.data)
                    target.flush()
            except grpc.RpcError as exc:
                if not self.detached.is_set():
                    raise from_rpc_error(exc, address=self.client.address) from None
        except StopIteration:
            pass
        except Exception as exc:
            import grpc

            if isinstance(exc, grpc.RpcError):
                raise from_rpc_error(exc, address=self.client.address) from None
            raise
        finally:
            self._over.set()
            self.inputs.put(None)
            if saved is not None:
                with contextlib.suppress(termios.error):
                    termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            with contextlib.suppress(Exception):
                self.call.cancel()
        outcome.detached = self.detached.is_set() and outcome.ended is None
        return outcome

    def _resize(self, fd: int) -> None:
        rows, cols = terminal_size(fd)
        if rows and cols:
            self.inputs.put(self.input_type(rows=rows, cols=cols))

    def _read_stdin(self, fd: int, scan: bool) -> None:
        make = self.input_type
        while True:
            try:
                data = os.read(fd, _READ)
            except OSError:
                data = b""
            if not data:
                if not scan:   # a pipe's end is the job's EOF (a terminal's is Ctrl-D, sent as a byte)
                    self.inputs.put(make(stdin_eof=True))
                return
            if scan:
                data, detach = self.scanner.feed(data)
                if data:
                    self.inputs.put(make(stdin=data))
                if detach:
                    self.detached.set()
                    # The daemon ends the call once what was typed before the detach keys reached the job
                    # (a cancel from here could overtake those keys and drop them).
                    self.inputs.put(make(detach=True))
                    if not self._over.wait(_DETACH_FLUSH_S):
                        self.call.cancel()
                    return
            else:
                self.inputs.put(make(stdin=data))


def _raise_restore(signum: int, _frame: Any) -> None:
    raise ClientSignal(signum)
