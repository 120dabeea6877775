"""Bounds on long-lived calls: how many streams one client, and all clients together, may hold open.

A stream (log or metrics follow, upload, image pull, runtime build) costs the
daemon a file descriptor, memory and poll work for as long as it is open; a
client that opens thousands would starve everyone else. Beyond either bound
the call is refused at once with RESOURCE_EXHAUSTED (CLI exit 9), naming the
bound, rather than queued.
"""

from __future__ import annotations

import threading

from capsa.errors import LimitExceeded

__all__ = ["StreamLimits"]


class StreamLimits:
    """Counts open streams per client (certificate common name) and in total; thread-safe."""

    def __init__(self, *, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self._count = 0

    def acquire(self, client: str, method: str) -> None:
        """Take one slot for ``client``, or raise LimitExceeded naming the bound that is full."""
        name = method.rsplit("/", 1)[-1]
        with self._lock:
            mine = self._open.get(client, 0)
            if mine >= self.per_client:
                raise LimitExceeded(f"{name} refused: client {client!r} already has {mine} streams open"
                                    f" (limit {self.per_client} per client; api.max_streams_per_client)")
            if self._count >= self.total:
                raise LimitExceeded(f"{name} refused: the daemon already serves {self._count} streams"
                                    f" (limit {self.total}; api.max_streams)")
            self._open[client] = mine + 1
            self._count += 1

    def release(self, client: str) -> None:
        with self._lock:
            left = self._open.get(client, 0) - 1
            if left > 0:
                self._open[client] = left
            else:
                self._open.pop(client, None)
            self._count = max(0, self._count - 1)

    def open_streams(self, client: str | None = None) -> int:
        with self._lock:
            return self._count if client is None else self._open.get(client, 0)
