"""Where runs wait for a thread: FIFO worker pools (one per named queue) and the retry timer.

A pool's size *is* its queue's concurrency limit: a run holds a worker from its first
transition to its end (or to a retry wait, which frees the worker). Workers are created on
demand, up to the limit, and live until the engine shuts down, so a burst never creates
more threads (or SQLite connections) than the limits allow.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["WAIT_BUCKETS", "QueueStats", "RetryTimer", "WorkerPool"]

log = logging.getLogger("capsa.fsm")


#: upper bounds (seconds) of the queue-wait histogram buckets
WAIT_BUCKETS: tuple[float, ...] = (0.01, 0.1, 0.5, 1, 5, 30, 60, 300, 1800)


@dataclass(frozen=True)
class QueueStats:
    """One queue right now, for monitoring (image ADR-008 "monitoring to detect if limits are too
    restrictive"): runs waiting, runs holding a worker, the limit, and how long runs waited."""

    name: str
    limit: int
    depth: int
    in_flight: int
    waited_count: int
    waited_sum_s: float
    waited_buckets: tuple[int, ...]  # cumulative counts per WAIT_BUCKETS bound (then +Inf = count)


class WorkerPool:
    def __init__(self, name: str, limit: int, handler: Callable[[str], None]) -> None:
        if limit < 1:
            raise ValueError(f"queue {name!r}: limit must be >= 1, got {limit}")
        self.name = name
        self.limit = limit
        self._handler = handler
        self._cond = threading.Condition()
        self._items: deque[str] = deque()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._stopping = False
        self._busy = 0
        self._since: dict[str, float] = {}  # run id -> when it was queued
        self._waited: list[int] = [0] * len(WAIT_BUCKETS)
        self._waited_count = 0
        self._waited_sum = 0.0

    def stats(self) -> QueueStats:
        with self._cond:
            cumulative: list[int] = []
            total = 0
            for n in self._waited:
                total += n
                cumulative.append(total)
            return QueueStats(self.name, self.limit, len(self._items), self._busy, self._waited_count,
                              self._waited_sum, tuple(cumulative))

    def submit(self, run_id: str) -> None:
        with self._cond:
            self._since.setdefault(run_id, time.monotonic())
            self._items.append(run_id)
            # more waiting items than idle workers: grow, up to the limit
            if not self._stopping and len(self._items) > self._idle and len(self._threads) < self.limit:
                thread = threading.Thread(
                    target=self._work, name=f"fsm-{self.name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            self._cond.notify()

    def remove(self, run_id: str) -> bool:
        """Take a still-waiting run out of the queue (used by cancel)."""
        with self._cond:
            try:
                self._items.remove(run_id)
            except ValueError:
                return False
            self._since.pop(run_id, None)
            return True

    def pending(self) -> int:
        with self._cond:
            return len(self._items)

    def stop(self) -> None:
        """Workers exit after their current run; waiting runs stay queued (in the database)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def join(self, deadline: float) -> bool:
        with self._cond:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._stopping:
                    self._idle += 1
                    try:
                        self._cond.wait()
                    finally:
                        self._idle -= 1
                if self._stopping:
                    return
                run_id = self._items.popleft()
                self._record_wait(time.monotonic() - self._since.pop(run_id, time.monotonic()))
                self._busy += 1
            try:
                self._handler(run_id)
            except Exception:  # the handler reports its own errors; the worker must survive
                log.exception("fsm queue %s: run %s escaped its handler", self.name, run_id)
            finally:
                with self._cond:
                    self._busy -= 1

    def _record_wait(self, waited: float) -> None:
        """Called with the lock held."""
        self._waited_count += 1
        self._waited_sum += waited
        for i, bound in enumerate(WAIT_BUCKETS):
            if waited <= bound:
                self._waited[i] += 1
                break


class RetryTimer:
    """Calls ``fire(run_id)`` when a run's retry wait is over (one thread for all runs)."""

    def __init__(self, clock: Callable[[], float], fire: Callable[[str], None]) -> None:
        self._clock = clock
        self._fire = fire
        self._cond = threading.Condition()
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False

    def add(self, run_id: str, due: float) -> None:
        with self._cond:
            if self._stopping:
                return
            self._due[run_id] = due
            heapq.heappush(self._heap, (due, run_id))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="fsm-retry-timer", daemon=True)
                self._thread.start()
            self._cond.notify()

    def remove(self, run_id: str) -> bool:
        with self._cond:
            return self._due.pop(run_id, None) is not None  # its heap entry is skipped lazily

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._due.clear()
            self._cond.notify_all()

    def join(self, deadline: float) -> bool:
        thread = self._thread
        if thread is None:
            return True
        thread.join(max(0.0, deadline - time.monotonic()))
        return not thread.is_alive()

    def _loop(self) -> None:
        while True:
            with self._cond:
                due_now: list[str] = []
                while not due_now:
                    if self._stopping:
                        return
                    now = self._clock()
                    while self._heap and self._heap[0][0] <= now:
                        due, run_id = heapq.heappop(self._heap)
                        if self._due.get(run_id) == due:
                            del self._due[run_id]
                            due_now.append(run_id)
                    if due_now:
                        break
                    timeout = self._heap[0][0] - now if self._heap else None
                    self._cond.wait(timeout)
            for run_id in due_now:
                try:
                    self._fire(run_id)
                except Exception:
                    log.exception("fsm retry timer: rescheduling run %s failed", run_id)
