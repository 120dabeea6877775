"""Standbys in the supervisor: ask the zygote for one while idle, send it the next start directly.

A standby (:mod:`capsa.runtime.standby`) is a job process cloned ahead of its job. The supervisor
holds one end of its socket: it asks for one ``ZygoteStandby`` after ``standby_idle_s`` without a
start, learns its PID when it says ``StandbyReady`` (it is then the supervisor's child already), and
sends it the next ``ZygoteStart`` with the job's descriptors instead of queueing that order for the
zygote. The job's PID is then known at once; no ``Forked`` report is needed.

A standby that exits unused (killed; a zygote that could not clone one closes the socket instead)
is reaped like any child and dropped; repeated failures back off exponentially, so a kernel that
refuses the clone costs one attempt every few seconds, not one per start. During a burst no standby
is made (the supervisor is never idle that long), so the zygote serves starts as before.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from capsa.errors import CapsaError
from capsa.runtime.protocol import Message, StandbyReady, ZygoteStandby, ZygoteStart, decode, encode
from capsa.runtime.supervisor._links import read_ready
from capsa.runtime.wire import FrameReader, encode_frame

__all__ = ["StandbyMixin"]

_MAX_BACKOFF_DOUBLINGS = 8   # after 8 failures in a row: one attempt every 256 x the idle time (~5 s)
_SEND_TIMEOUT_S = 1.0


@dataclass
class _Standby:
    sock: socket.socket
    reader: FrameReader = field(default_factory=FrameReader)
    pid: int = 0   # 0 until it said StandbyReady


class StandbyMixin:
    """Mixed into ``Supervisor`` (its ``sel``, ``zygote``, ``early_exits``, ``abandoned_pids``, ``log``)."""

    sel: selectors.BaseSelector
    zygote: Any
    early_exits: dict[int, int]
    abandoned_pids: set[int]

    def _standby_init(self, idle_s: float | None) -> None:
        self.standby_idle_s = idle_s   # None: never make standbys
        self.standbys_used = 0
        self._standby: _Standby | None = None
        self._standby_failures = 0
        self._last_start = time.monotonic()

    log: Callable[[str], None]   # EventLoop's
    # -- the loop's side -----------------------------------------------------------------------
    def standby_deadline(self) -> float | None:
        """When to ask for a standby (monotonic), or None (one exists or is on its way, or none wanted)."""
        if self.standby_idle_s is None or self._standby is not None:
            return None
        return self._last_start + self.standby_idle_s * (1 << min(self._standby_failures, _MAX_BACKOFF_DOUBLINGS))

    def run_standby_deadline(self, now: float) -> None:
        deadline = self.standby_deadline()
        if deadline is None or now < deadline:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        self._standby = _Standby(ours)
        self.sel.register(ours, selectors.EVENT_READ, ("standby", None))
        self.zygote.submit(ZygoteStandby(), [theirs.detach()])   # the zygote takes (and closes) our copy

    def on_standby_fd(self, fd: int) -> None:
        standby = self._standby
        if standby is None or standby.sock.fileno() != fd:
            return
        data = read_ready(fd, 4096)
        if data is None:
            return
        if not data:   # it died, or the zygote could not clone it
            self._drop_standby(failed=True)
            return
        try:
            messages: list[Message] = [decode(frame)[1] for frame in standby.reader.feed(data)]
        except CapsaError as exc:
            self.log(f"a standby sent something unreadable ({exc}); dropping it")
            self._drop_standby(failed=True)
            return
        for msg in messages:
            if isinstance(msg, StandbyReady) and msg.pid > 0 and standby.pid == 0:
                standby.pid = msg.pid
                if self.early_exits.pop(msg.pid, None) is not None:   # reaped before we read this
                    self._drop_standby(failed=True, exited=True)
                    return
                self._standby_failures = 0

    def standby_reaped(self, pid: int) -> bool:
        """True if ``pid`` was the unused standby (its exit concerns no job)."""
        if self._standby is None or self._standby.pid != pid or pid == 0:
            return False
        self._drop_standby(failed=True, exited=True)
        return True

    def drop_standby(self) -> None:
        """Let an unused standby go (it exits at EOF); at shutdown."""
        if self._standby is not None:
            self._drop_standby(failed=False)

    # -- the start's side ------------------------------------------------------------------------
    def start_on_standby(self, order: ZygoteStart, fds: list[int]) -> int:
        """Send ``order`` with ``fds`` to the ready standby: its PID, or 0 if there is none (or it is gone).

        On success the descriptors are closed (the standby holds its copies); on 0 they are still the caller's.
        """
        self._last_start = time.monotonic()
        standby = self._standby
        if standby is None or standby.pid == 0:
            return 0
        self._standby = None
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(standby.sock)
        sock = standby.sock
        try:
            frame = encode_frame(encode(order))
            sock.settimeout(_SEND_TIMEOUT_S)   # an idle socket with a waiting reader: never waits in practice
            sent = socket.send_fds(sock, [frame], fds)
            if sent < len(frame):
                sock.sendall(frame[sent:])
        except (OSError, CapsaError) as exc:
            self.log(f"standby {standby.pid} did not take a start ({exc}); the zygote clones one")
            # Whatever it got, that standby is done: at EOF it exits without running anything.
            self._forget_pid(standby.pid)
            return 0
        finally:
            sock.close()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.standbys_used += 1
        return standby.pid

    def _drop_standby(self, *, failed: bool, exited: bool = False) -> None:
        standby, self._standby = self._standby, None
        if standby is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(standby.sock)
            standby.sock.close()   # a live one sees EOF and exits
            if not exited:
                self._forget_pid(standby.pid)
        self._standby_failures = self._standby_failures + 1 if failed else 0
        self._last_start = time.monotonic()

    def _forget_pid(self, pid: int) -> None:
        """``pid`` (a standby let go) exits for no job: drop its status, now or when it is reaped."""
        if pid > 0 and self.early_exits.pop(pid, None) is None:
            self.abandoned_pids.add(pid)

