"""Long-lived calls on the event loop: log and metrics follows that hold no thread while idle, and a
bounded pool for the few streams whose domain code must block (uploads, image pulls, runtime builds).

A follower polls with ``asyncio.sleep``; the cheap "did anything change?" probe
(a directory listing and a stat) runs on the loop, and only the reading of new
records runs in the server's thread pool, in batches, so a thousand idle
followers cost timers, not threads. See docs/adr/0011-api-streams-and-limits.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from capsa.errors import Canceled, LimitExceeded, NotFound
from capsa.logs import LogChunk, is_finished, log_size, read_log
from capsa.metrics import JobSample, MetricsSampler

__all__ = ["BlockingStreams", "follow_log", "follow_metrics", "poll_interval", "until_set"]

T = TypeVar("T")
_BATCH_CHUNKS = 256
_BATCH_BYTES = 4 << 20


def poll_interval(idle_s: float) -> float:
    """20 ms while output is fresh (an attached short job ends that much sooner), slower once idle:
    a thousand idle followers then cost a few thousand cheap probes a second, not fifty thousand."""
    if idle_s < 1.0:
        return 0.02
    if idle_s < 10.0:
        return 0.1
    return 0.25


class _Probe:
    """(finished, size) of a log directory, shared by every follower of it for one short tick."""

    TTL = 0.015

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[float, bool, int]] = {}

    def __call__(self, log_dir: Path, now: float) -> tuple[bool, int]:
        hit = self._seen.get(log_dir)
        if hit is not None and now - hit[0] < self.TTL:
            return hit[1], hit[2]
        # finished first: a log finished before its size was taken is read to its end by the next pass.
        finished = is_finished(log_dir)
        size = log_size(log_dir)
        if len(self._seen) > 4096:
            self._seen.clear()
        self._seen[log_dir] = (now, finished, size)
        return finished, size


_probe = _Probe()   # used from the event loop thread only


def _take(chunks: Iterator[LogChunk]) -> list[LogChunk]:
    batch: list[LogChunk] = []
    size = 0
    for chunk in chunks:
        batch.append(chunk)
        size += len(chunk.data)
        if len(batch) >= _BATCH_CHUNKS or size >= _BATCH_BYTES:
            break
    return batch


async def until_set(items: AsyncIterator[T], stop: asyncio.Event) -> AsyncIterator[T]:
    """``items`` until they end or ``stop`` is set, whichever comes first, even while ``items`` waits
    (a follower between polls, an exec that prints nothing): a detached client's call ends at once."""
    waiter = asyncio.ensure_future(stop.wait())
    step: asyncio.Future[T] | None = None
    try:
        while not stop.is_set():
            step = asyncio.ensure_future(items.__anext__())
            await asyncio.wait((step, waiter), return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                return
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        waiter.cancel()
        # Also when the call itself was cancelled: a step left running would hold ``items``, and the
        # caller's ``items.aclose()`` (which ends an exec with its client) would then fail.
        if step is not None and not step.done():
            step.cancel()
            with contextlib.suppress(BaseException):
                await step


async def follow_log(log_dir: Path, *, from_seq: int, live: bool,
                     max_interval: float | None = None) -> AsyncIterator[LogChunk]:
    """The chunks of the log from ``from_seq``; with ``live``, then new ones until the end-of-log record.

    Each pass reads with ``read_log(follow=False)`` from the next expected seq, so
    chunks are exact and in order; a pass only runs when the log's size changed
    or it is finished. The finished probe is taken *before* the pass: a log
    finished before a read is read to its end by that read.
    """
    loop = asyncio.get_running_loop()
    next_seq = from_seq
    seen_size = -1
    fresh_at = loop.time()
    while True:
        if live:
            finished, size = _probe(log_dir, loop.time())
        else:
            finished, size = True, 0
        if size != seen_size or finished:
            seen_size = size
            chunks = read_log(log_dir, from_seq=next_seq, follow=False)
            pending: Future[list[LogChunk]] | asyncio.Future[list[LogChunk]] | None = None
            try:
                while True:
                    pending = loop.run_in_executor(None, _take, chunks)
                    batch = await pending
                    pending = None
                    if not batch:
                        break
                    fresh_at = loop.time()
                    for chunk in batch:
                        yield chunk
                    next_seq = batch[-1].seq + 1
            finally:
                _close_after(chunks, pending)
        if finished:
            return
        # An attached terminal (max_interval) never slows down: an echo 250 ms late is a broken terminal.
        interval = poll_interval(loop.time() - fresh_at)
        await asyncio.sleep(interval if max_interval is None else min(interval, max_interval))


def _close_after(chunks: Iterator[LogChunk], pending: Any) -> None:
    """Close the reader (its file descriptor) once no worker thread is inside it any more."""
    close = getattr(chunks, "close", None)
    if close is None:
        return
    if pending is None or pending.done():
        close()
    else:   # canceled while a batch was being read: the thread still owns the generator
        pending.add_done_callback(lambda _f: close())


async def follow_metrics(sampler: MetricsSampler, job_id: str, *, follow: bool, history: bool,
                         ended: Callable[[], bool]) -> AsyncIterator[JobSample]:
    """``MetricsSampler.stream`` without a thread: the kept history (if asked), the latest sample, then
    (follow) each newer one until the job has ended. Samples live in memory; only ``ended`` (a
    database read) runs in the thread pool."""
    loop = asyncio.get_running_loop()
    last = 0
    if history:
        for s in sampler.history(job_id):
            last = s.timestamp_ns
            yield s
    tick = max(0.02, min(0.25, sampler.interval_s / 4))
    if not last:
        first = sampler.latest(job_id)
        if first is None and not await loop.run_in_executor(None, ended):
            deadline = loop.time() + 2 * sampler.interval_s + 1   # a job that just started: one tick away
            while first is None and loop.time() < deadline:
                await asyncio.sleep(tick)
                first = sampler.latest(job_id)
        if first is None and not follow:
            raise NotFound(f"no metrics were sampled for job {job_id[:12]}"
                           " (it has not run yet, or ended before its first sample)")
        if first is not None:
            last = first.timestamp_ns
            yield first
    quiet_for = max(0.2, 2 * sampler.interval_s)   # no new sample for this long: has the job ended?
    quiet_since = loop.time()
    while follow:
        await asyncio.sleep(tick)
        s = sampler.latest(job_id)
        if s is not None and s.timestamp_ns > last:
            last = s.timestamp_ns
            quiet_since = loop.time()
            yield s
        elif loop.time() - quiet_since >= quiet_for:
            if await loop.run_in_executor(None, ended):
                return
            quiet_since = loop.time()


class BlockingStreams:
    """A bounded pool for streams whose domain code blocks a thread for the stream's whole life.

    When every thread is busy a new such stream is refused at once (RESOURCE_EXHAUSTED) rather
    than queued behind the others: a queued upload would look hung to its client.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rpc-stream")
        self._slots = threading.BoundedSemaphore(threads)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _claim(self, what: str) -> None:
        if not self._slots.acquire(blocking=False):
            raise LimitExceeded(f"{what} refused: all {self.threads} threads for uploads, pulls and builds"
                                " are busy (api.blocking_stream_threads); try again shortly")

    async def call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a pool thread; the slot is held until it returns (even if the caller is gone)."""
        self._claim(what)
        future = self._pool.submit(fn, *args)
        future.add_done_callback(lambda _f: self._slots.release())
        return await asyncio.wrap_future(future)

    async def iterate(self, what: str, items: Callable[[threading.Event], Iterator[T]]) -> AsyncIterator[T]:
        """Drive the blocking generator ``items(stop)`` on one pool thread, handing its items to the loop.

        ``stop`` is set when the consumer goes away, so the generator can end early.
        """
        self._claim(what)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=16)
        stop = threading.Event()

        def put(kind: str, value: Any) -> None:
            # Blocks this worker while the consumer is slow (back-pressure); gives up once it is gone.
            fut = asyncio.run_coroutine_threadsafe(queue.put((kind, value)), loop)
            while not stop.is_set():
                try:
                    fut.result(timeout=0.5)
                    return
                except TimeoutError:
                    continue
            fut.cancel()

        def produce() -> None:
            try:
                for item in items(stop):
                    if stop.is_set():
                        return
                    put("item", item)
                put("end", None)
            except BaseException as exc:
                put("error", exc)
            finally:
                self._slots.release()

        try:
            self._pool.submit(produce)
        except BaseException:
            self._slots.release()
            raise
        try:
            while True:
                kind, value = await queue.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            stop.set()

    @staticmethod
    def requests_in_thread(requests: Any, loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
        """A blocking iterator, for a pool thread, over an aio request stream read on the loop."""
        source = requests.__aiter__()
        while True:
            pending = asyncio.run_coroutine_threadsafe(source.__anext__(), loop)
            while True:
                try:
                    item = pending.result(timeout=1.0)
                    break
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    # A slow client is fine; a stopped server is not: never outlive the loop.
                    if loop.is_closed() or not loop.is_running():
                        pending.cancel()
                        raise Canceled("the daemon is stopping: upload abandoned") from None
            yield item
