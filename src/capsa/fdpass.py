"""The local fast path of ``capsa cp``: open file descriptors handed over a root-only unix socket.

gRPC in Python moves at most a few hundred MiB/s, far below a local disk; a client on the daemon's
host running as root can instead receive (copy out) or give (copy in) *open descriptors* of the
regular files and copy them in the kernel (see :mod:`capsa.extents`). The protocol (ADR-0014):

1. ``FileService.FastPath`` (an authorised, audited RPC, developer and above) issues a one-time
   random token with a short expiry and names the socket, ``<home>/run/copy/fds.sock`` (the
   directory is 0700 root).
2. The client connects and sends ``token\\n``; the daemon checks the peer with ``SO_PEERCRED``
   (uid 0 only) and the token (known, unused, not expired) and answers ``ok\\n`` or ``no: why\\n``.
3. The copy RPC (``CopyOut`` / ``CopyIn``) names the token; the daemon claims the connection
   (an unknown, used or expired token is PermissionDenied). The side that *reads* files sends
   one descriptor per large regular file (``SCM_RIGHTS``) just before that file's entry in the
   tar stream; the other side takes them in the same order. Directories, symlinks, small files
   and metadata keep travelling in the stream, and so does everything when any step fails.

Standard library only on the client side (:func:`connect`, :func:`send_fd`, :func:`recv_fd`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from capsa.errors import Canceled, InvalidArgument, PermissionDenied

__all__ = ["FAST_MIN_BYTES", "ConnectionGone", "FdBroker", "connect", "recv_fd", "send_fd"]

class ConnectionGone(Canceled):
    """The other end closed the descriptor connection: usually because it ended the copy, whose RPC
    status then says why (a refused path, a full disk); see ``CapsaClient.copy_in``."""


log = logging.getLogger(__name__)

FAST_MIN_BYTES = 256 << 10     # smaller files are cheaper in the stream than as a descriptor
_TOKEN_TTL_S = 30.0
_HANDSHAKE_S = 5.0
_RECV_TIMEOUT_S = 120.0         # a descriptor is sent just before its entry: it is normally already there


@dataclass
class _Ticket:
    expires: float
    conn: socket.socket | None = field(default=None)


class FdBroker:
    """The daemon's end: the socket, the tokens, and the connections waiting for their copy RPC."""

    def __init__(self, path: Path, *, ttl_s: float = _TOKEN_TTL_S) -> None:
        self.path = path
        self.ttl_s = ttl_s
        self._tickets: dict[str, _Ticket] = {}
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)   # the socket is reachable by root only
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()              # left by a daemon that was killed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        with _short(str(self.path)) as address:
            sock.bind(address)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="cp-fds", daemon=True)
        self._thread.start()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._thread is not None:
            self._thread.join(5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with self._lock:
            for ticket in self._tickets.values():
                if ticket.conn is not None:
                    ticket.conn.close()
            self._tickets.clear()

    def issue(self) -> tuple[str, str, float]:
        """(socket path, one-time token, seconds it stays valid) for an authorised copy RPC's caller."""
        token = secrets.token_hex(16)
        with self._lock:
            self._expire()
            self._tickets[token] = _Ticket(time.monotonic() + self.ttl_s)
        return str(self.path), token, self.ttl_s

    def claim(self, token: str) -> socket.socket:
        """The connection that presented ``token``; the token is then used up."""
        with self._lock:
            self._expire()
            ticket = self._tickets.get(token)
            if ticket is None or ticket.conn is None:
                raise PermissionDenied("fast copy token unknown, already used, expired or not connected;"
                                       " nothing was copied")
            del self._tickets[token]
        ticket.conn.settimeout(_RECV_TIMEOUT_S)
        return ticket.conn

    def _expire(self) -> None:
        now = time.monotonic()
        for token in [t for t, ticket in self._tickets.items() if ticket.expires < now]:
            conn = self._tickets.pop(token).conn
            if conn is not None:
                conn.close()

    def _accept(self) -> None:
        while self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return   # closed
            try:
                self._handshake(conn)
            except OSError as exc:
                log.info("fast copy handshake failed: %s", exc)
                conn.close()

    def _handshake(self, conn: socket.socket) -> None:
        conn.settimeout(_HANDSHAKE_S)
        _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        struct.calcsize("3i")))
        if uid != 0:
            return _refuse(conn, f"uid {uid} is not root")
        line = b""
        while not line.endswith(b"\n") and len(line) < 128:
            piece = conn.recv(128 - len(line))
            if not piece:
                break
            line += piece
        token = line.strip().decode("ascii", "replace")
        with self._lock:
            self._expire()
            ticket = self._tickets.get(token)
            if ticket is None or ticket.conn is not None:
                return _refuse(conn, "unknown, used or expired token")
            ticket.conn = conn
        conn.sendall(b"ok\n")


def _refuse(conn: socket.socket, why: str) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(f"no: {why}\n".encode())
    conn.close()


# -- both ends -------------------------------------------------------------------------------------
def connect(path: str, token: str, *, timeout: float = _HANDSHAKE_S) -> socket.socket | None:
    """A connection that presented ``token``, or None when the fast path is not possible here."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        with _short(path) as address:
            sock.connect(address)
        sock.sendall(token.encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n") and len(reply) < 256:
            piece = sock.recv(256)
            if not piece:
                break
            reply += piece
    except OSError:
        sock.close()
        return None
    if reply != b"ok\n":
        sock.close()
        return None
    sock.settimeout(_RECV_TIMEOUT_S)
    return sock


@contextlib.contextmanager
def _short(path: str) -> Iterator[str]:
    """``path`` as a socket address: a long one (sun_path holds 108 bytes) through its directory's fd."""
    if len(os.fsencode(path)) < 100:
        yield path
        return
    dfd = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{dfd}/{os.path.basename(path)}"
    finally:
        os.close(dfd)


def send_fd(sock: socket.socket, fd: int) -> None:
    try:
        socket.send_fds(sock, [b"f"], [fd])
    except OSError as exc:   # the other side closed its end or stopped taking descriptors
        raise ConnectionGone(f"the fast copy connection is gone ({exc.strerror or exc}); the copy stopped") from None


def recv_fd(sock: socket.socket) -> int:
    """The next descriptor; one byte and exactly one descriptor per message, anything else refused."""
    try:
        data, fds, _, _ = socket.recv_fds(sock, 1, 4)
    except TimeoutError:
        raise InvalidArgument("the fast copy connection sent no descriptor in time") from None
    except OSError as exc:
        raise ConnectionGone(f"the fast copy connection is gone ({exc.strerror or exc}); nothing was written") from None
    if data == b"f" and len(fds) == 1:
        return fds[0]
    for fd in fds:
        os.close(fd)
    raise InvalidArgument("the fast copy connection sent no descriptor where the stream announced one"
                          " (closed early?); nothing was written")
