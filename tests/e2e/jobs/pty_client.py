"""Drive the `capsa` CLI from a real pseudo-terminal, as a person at a terminal would (stdlib ``pty`` only).

The CLI runs as a session leader whose controlling terminal is the slave of a pty this test
holds the master of: what the CLI prints is read from the master, typing is writing to it,
a window resize is TIOCSWINSZ on it (the kernel sends the CLI SIGWINCH), and the terminal's
modes can be read back at any time (tcgetattr on the slave) to see whether the CLI left it raw.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time


class PtyClient:
    def __init__(self, argv: list[str], env: dict[str, str], *, rows: int = 24, cols: int = 80) -> None:
        self.master, self.slave = os.openpty()
        self.resize(rows, cols)
        self.saved = termios.tcgetattr(self.slave)
        self.proc = subprocess.Popen(argv, stdin=self.slave, stdout=self.slave, stderr=self.slave, env=env,
                                     start_new_session=True, preexec_fn=_take_terminal, close_fds=True)
        self.buf = b""

    def read_some(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return b""
        try:
            data = os.read(self.master, 65536)
        except OSError:
            return b""
        self.buf += data
        return data

    def expect(self, pattern: bytes, timeout: float = 15.0) -> re.Match[bytes]:
        """Wait until ``pattern`` (a regex) appears in the output; the output up to its end is consumed."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = regex.search(self.buf)
            if m is not None:
                self.buf = self.buf[m.end():]
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} not seen within {timeout}s; output: {self.buf[-2000:]!r}")
            self.read_some(min(left, 0.2))

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def is_raw(self) -> bool:
        lflag = termios.tcgetattr(self.slave)[3]
        return not lflag & (termios.ECHO | termios.ICANON)

    def wait_attached(self, timeout: float = 15.0) -> None:
        """Wait until the CLI put the terminal in raw mode (it does once the daemon accepted the attach):
        keys typed before that would go through the client's cooked terminal instead."""
        deadline = time.monotonic() + timeout
        while not self.is_raw():
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise AssertionError(f"the client never attached; output: {self.buf[-2000:]!r}")
            self.read_some(min(left, 0.02))

    def wait(self, timeout: float = 15.0) -> int:
        """The CLI's exit code; its output meanwhile stays readable in ``buf``."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the CLI did not exit within {timeout}s; output: {self.buf[-2000:]!r}")
            self.read_some(0.05)
        while self.read_some(0.05):
            pass
        return int(self.proc.returncode)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def _take_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
