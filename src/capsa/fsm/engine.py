"""The engine: starts (deduplicated), executes, retries, cancels and resumes durable runs."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType

from capsa.errors import (
    AlreadyExists,
    Canceled,
    CapsaError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Timeout,
    Unavailable,
    error_from_code,
    is_retryable,
)
from capsa.fsm.machine import Abort, Context, Handoff, Machine, RetryPolicy, dump_json
from capsa.fsm.queues import QueueStats, RetryTimer, WorkerPool
from capsa.fsm.store import Event, EventSpec, RunInfo, RunStore
from capsa.state.db import Database

__all__ = ["DEFAULT_QUEUES", "DEFAULT_RETRY", "Engine", "RunHandle"]

log = logging.getLogger("capsa.fsm")

DEFAULT_QUEUES: Mapping[str, int] = {"download": 5, "unpack": 2}  # image ADR-005/008
DEFAULT_RETRY = RetryPolicy(base_s=0.5, cap_s=30.0, max_attempts=5)
_WAIT_POLL_S = 0.5  # waiters also poll, for runs executed by another engine (process)


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, CapsaError):  # a bug: say where, so nobody needs the daemon log
        frames = traceback.extract_tb(exc.__traceback__)
        if frames:
            last = frames[-1]
            text += f" (at {os.path.basename(last.filename)}:{last.lineno} in {last.name})"
    return text


class RunHandle:
    """A caller's view of one run. ``joined`` is True when ``start`` joined an active run."""

    def __init__(self, engine: Engine, run_id: str, *, joined: bool = False) -> None:
        self._engine = engine
        self.run_id = run_id
        self.joined = joined

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r}, joined={self.joined})"

    def info(self) -> RunInfo:
        return self._engine.get(self.run_id)

    def cancel(self) -> None:
        self._engine.cancel(self.run_id)

    def wait(self, timeout: float | None = None) -> RunInfo:
        """The final :class:`RunInfo`; follows handoffs to the run this one deferred to.

        Raises the typed :class:`CapsaError` of a failed run, :class:`Canceled` for a canceled
        one, :class:`Timeout` when ``timeout`` passes, :class:`Unavailable` if the engine shuts
        down first (the run continues after the next resume).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        run_id, seen = self.run_id, set[str]()
        while True:
            info = self._engine._wait_finished(run_id, deadline)
            if info.state == "handed_off" and info.defer_to:
                seen.add(run_id)
                if info.defer_to in seen:
                    raise FailedPrecondition(f"run {self.run_id} hands off in a cycle through {info.defer_to}")
                run_id = info.defer_to
                continue
            if info.state == "failed":
                error = error_from_code(info.error_code or "internal", info.error_message or "run failed")
                error.detail.update(run_id=info.run_id, machine=info.machine, resource_id=info.resource_id)
                raise error
            if info.state == "canceled":
                raise Canceled(f"run {info.run_id} ({info.machine} {info.resource_id}) was canceled",
                               detail={"run_id": info.run_id})
            return info

    def done(self) -> bool:
        """True when :meth:`wait` would return (or raise) without blocking."""
        run_id, seen = self.run_id, set[str]()
        while True:
            info = self._engine.get(run_id)
            if not info.finished:
                return False
            if info.state != "handed_off" or not info.defer_to or info.defer_to in seen:
                return True
            seen.add(run_id)
            run_id = info.defer_to


class Engine:
    """Runs registered machines durably; thread-safe, shared by every machine of the daemon.

    ``queues`` maps queue names to concurrency limits (default: download 5, unpack 2);
    machines without a queue share a pool of ``unqueued_workers`` threads.
    """

    def __init__(
        self,
        db: Database,
        *,
        queues: Mapping[str, int] | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        clock: Callable[[], float] = time.monotonic,
        progress_interval_s: float = 0.5,
        unqueued_workers: int = 16,
        rng: random.Random | None = None,
    ) -> None:
        self._store = RunStore(db)
        self._run_references: list[str] = []   # SELECTs of run ids other components keep (prune_history)
        self._queues = dict(DEFAULT_QUEUES if queues is None else queues)
        for name, limit in self._queues.items():
            if not name or limit < 1:
                raise InvalidArgument(f"queue {name!r} needs a name and a limit >= 1 (got {limit})")
        self.retry = retry
        self._clock = clock
        self.progress_interval_s = progress_interval_s
        self._unqueued_workers = unqueued_workers
        self._rng = rng or random.Random()
        self._lock = threading.Lock()  # guards the dicts/sets below; never held across I/O
        self._machines: dict[str, Machine] = {}
        self._pools: dict[str | None, WorkerPool] = {}
        self._owned: set[str] = set()  # runs this engine has queued, timed or is running
        self._contexts: dict[str, Context] = {}
        self._canceled: set[str] = set()
        self._resumed: set[str] = set()
        self._done = threading.Condition()
        self._stopping = False
        self._timer = RetryTimer(clock, self._retry_due)

    # -- public API ------------------------------------------------------------------
    def register(self, machine: Machine) -> None:
        if machine.queue is not None and machine.queue not in self._queues:
            raise InvalidArgument(f"machine {machine.name!r} uses unknown queue {machine.queue!r}"
                                  f" (known: {', '.join(sorted(self._queues))})")
        with self._lock:
            existing = self._machines.get(machine.name)
            if existing is not None and existing != machine:
                raise AlreadyExists(f"a different machine named {machine.name!r} is already registered")
            self._machines[machine.name] = machine

    def start(self, machine: str, resource_id: str, action: str, request: object = None) -> RunHandle:
        """Start a run, or join the active run for (machine, resource_id, action)."""
        if self._stopping:
            raise Unavailable("the fsm engine is shutting down")
        registered = self._machines.get(machine)
        if registered is None:
            raise NotFound(f"no fsm machine {machine!r} is registered")
        if not resource_id or not action:
            raise InvalidArgument("a run needs a resource_id and an action")
        try:
            request_json = dump_json(request)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"request for {machine} is not JSON-serialisable: {exc}") from exc
        run_id, created = self._store.create_or_join(machine, resource_id, action, request_json)
        if created:
            with self._lock:
                self._owned.add(run_id)
            self._pool(registered.queue).submit(run_id)
        return RunHandle(self, run_id, joined=not created)

    def resume(self) -> list[RunHandle]:
        """Continue every unfinished run of a registered machine (call once machines are registered).

        Each continues at its first incomplete transition, with ``ctx.resumed`` set; retry
        waits keep their persisted deadline; runs canceled before the restart end canceled.
        """
        handles: list[RunHandle] = []
        picked: list[tuple[RunInfo, Machine]] = []
        for info in self._store.unfinished():
            machine = self._machines.get(info.machine)
            if machine is None:
                log.warning("fsm: run %s of unregistered machine %s left for later", info.run_id, info.machine)
                continue
            handles.append(RunHandle(self, info.run_id, joined=True))
            with self._lock:
                if self._stopping:
                    raise Unavailable("the fsm engine is shutting down")
                if info.run_id in self._owned:
                    continue
                self._owned.add(info.run_id)
                self._resumed.add(info.run_id)
                if info.cancel_requested:
                    self._canceled.add(info.run_id)
            picked.append((info, machine))
        self._store.add_events(
            [(info.run_id, [("resume", info.current_transition, f"resumed from {info.state}")]) for info, _ in picked]
        )
        for info, machine in picked:
            remaining = (info.retry_at or 0.0) - time.time()
            if info.cancel_requested:
                self._pool(None).submit(info.run_id)
            elif info.state == "retry_wait" and remaining > 0:
                self._timer.add(info.run_id, self._clock() + remaining)
            elif info.state == "retry_wait":
                self._retry_due(info.run_id)
            else:
                self._pool(machine.queue).submit(info.run_id)
        return handles

    def cancel(self, run_id: str) -> None:
        """Cancel a run: it ends 'canceled' at its next check; finalizers still run. No-op when finished."""
        info = self._store.get(run_id)
        if info.finished or not self._store.request_cancel(run_id):
            return
        with self._lock:
            if run_id not in self._owned:
                return  # not ours (yet): resume() sees the persisted flag
            self._canceled.add(run_id)
            ctx = self._contexts.get(run_id)
        if ctx is not None:
            ctx.cancel.set()
            return
        machine = self._machines.get(info.machine)
        waiting_in_queue = machine is not None and self._pool(machine.queue).remove(run_id)
        if self._timer.remove(run_id) or waiting_in_queue:
            self._pool(None).submit(run_id)  # finish it now instead of waiting for a slot

    def get(self, run_id: str) -> RunInfo:
        return self._store.get(run_id)

    def handle(self, run_id: str) -> RunHandle:
        self._store.get(run_id)
        return RunHandle(self, run_id, joined=True)

    def history(self, *, resource_id: str | None = None, machine: str | None = None, limit: int = 100) -> list[RunInfo]:
        """Runs, newest first, optionally for one resource and/or machine."""
        return self._store.history(resource_id=resource_id, machine=machine, limit=limit)

    def events(self, run_id: str) -> list[Event]:
        self._store.get(run_id)
        return self._store.events(run_id)

    def queue_stats(self) -> list[QueueStats]:
        """Every configured queue (and the unqueued pool) now: depth, in flight, waits."""
        for name in self._queues:
            self._pool(name)  # a queue no run used yet still reports its limit and zeros
        with self._lock:
            pools = list(self._pools.values())
        return sorted((pool.stats() for pool in pools), key=lambda s: s.name)

    def run_counts(self) -> dict[tuple[str, str], int]:
        """Runs recorded per (machine, state)."""
        return self._store.counts()

    def prune(self, *, finished_before: float) -> int:
        """Delete finished runs (with outputs and events) that finished before a Unix time."""
        return self._store.prune(finished_before)

    def keep_runs_referenced_by(self, select_sql: str) -> None:
        """A component's table names runs by id (``SELECT run_id FROM ...``): :meth:`prune_history` keeps them."""
        self._run_references.append(select_sql)

    def prune_history(self, *, finished_before: float) -> int:
        """Retention: delete finished runs that finished before a Unix time, keeping the newest run per
        resource, hand-off targets and runs other components still reference; returns how many went."""
        return self._store.prune_history(finished_before, keep_sql=tuple(self._run_references))

    def shutdown(self, wait: bool = True, timeout: float = 10) -> None:
        """Stop taking work. Running transitions see ``ctx.cancel`` and are parked, not canceled:
        queued, waiting and interrupted runs all continue after the next :meth:`resume`."""
        with self._lock:
            self._stopping = True
            contexts = list(self._contexts.values())
            pools = list(self._pools.values())
        for ctx in contexts:
            ctx.cancel.set()
        self._timer.stop()
        for pool in pools:
            pool.stop()
        with self._done:
            self._done.notify_all()
        if wait:
            deadline = time.monotonic() + timeout
            stopped = self._timer.join(deadline)
            for pool in pools:
                stopped = pool.join(deadline) and stopped
            if not stopped:
                log.warning("fsm: transitions still running %.1fs after shutdown; they resume next start", timeout)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()

    # -- scheduling ------------------------------------------------------------------
    def _pool(self, queue: str | None) -> WorkerPool:
        with self._lock:
            pool = self._pools.get(queue)
            if pool is None:
                limit = self._unqueued_workers if queue is None else self._queues[queue]
                pool = WorkerPool(queue or "unqueued", limit, self._execute)
                if self._stopping:
                    pool.stop()
                self._pools[queue] = pool
            return pool

    def _retry_due(self, run_id: str) -> None:
        if self._stopping:
            return
        info = self._store.get(run_id)
        machine = self._machines.get(info.machine)
        if machine is None or not self._store.set_queued(run_id):
            self._release(run_id)
            return
        self._pool(machine.queue).submit(run_id)

    def _release(self, run_id: str) -> None:
        with self._lock:
            self._owned.discard(run_id)
            self._canceled.discard(run_id)
            self._resumed.discard(run_id)

    def _user_canceled(self, run_id: str) -> bool:
        with self._lock:
            return run_id in self._canceled

    def _wait_finished(self, run_id: str, deadline: float | None) -> RunInfo:
        with self._done:
            while True:
                info = self._store.get(run_id)
                if info.finished:
                    return info
                if self._stopping:
                    raise Unavailable(f"the fsm engine shut down before run {run_id} finished;"
                                      " it continues after the next resume")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise Timeout(f"run {run_id} ({info.machine} {info.resource_id}) is still {info.state}",
                                  detail={"run_id": run_id})
                self._done.wait(_WAIT_POLL_S if remaining is None else min(remaining, _WAIT_POLL_S))

    # -- execution (worker threads) ----------------------------------------------------
    def _execute(self, run_id: str) -> None:
        try:
            self._drive(run_id)
        except Exception:
            # the engine's own bookkeeping failed (e.g. the database); the run stays unfinished
            # in the database and continues at the next resume()
            log.exception("fsm: run %s interrupted by an engine error", run_id)
            self._release(run_id)

    def _drive(self, run_id: str) -> None:
        info = self._store.get(run_id)
        machine = self._machines.get(info.machine)
        if info.finished or machine is None:
            self._release(run_id)
            return
        ctx = Context(run_id=run_id, resource_id=info.resource_id, action=info.action, attempt=info.attempt,
                      cancel=threading.Event(), engine=self, machine=machine.name)
        if isinstance(info.progress, dict):
            ctx._progress.update(info.progress)
        with self._lock:
            if self._stopping:
                self._owned.discard(run_id)
                return
            self._contexts[run_id] = ctx
            resumed = run_id in self._resumed
            self._resumed.discard(run_id)
            if info.cancel_requested:
                self._canceled.add(run_id)
            if run_id in self._canceled:
                ctx.cancel.set()
        try:
            self._run(machine, info, ctx, resumed)
        finally:
            with self._lock:
                self._contexts.pop(run_id, None)

    def _run(self, machine: Machine, info: RunInfo, ctx: Context, resumed: bool) -> None:
        run_id, names = info.run_id, machine.transition_names
        done = self._store.outputs(run_id)
        if [(i, n) for i, n, _ in done] != list(enumerate(names))[: len(done)] or len(done) > len(names):
            recorded = ", ".join(n for _, n, _ in done)
            error = FailedPrecondition(f"machine {machine.name} changed: run {run_id} completed [{recorded}]"
                                       f" but the machine now has [{', '.join(names)}]")
            self._finish(machine, ctx, "failed", error=error, events=[("abort", None, error.message)])
            return
        index = len(done)
        request_json = done[-1][2] if done else dump_json(info.request)
        attempt = info.attempt if info.transition_index == index else 0
        while True:
            if self._user_canceled(run_id):
                self._finish(machine, ctx, "canceled")
                return
            if index == len(names):
                self._finish(machine, ctx, "succeeded", output_json=request_json)
                return
            if self._stopping:
                self._park(run_id, ctx, attempt=None)
                return
            name, fn = machine.transitions[index]
            attempt += 1
            if attempt > self.retry.max_attempts:
                error = Unavailable(f"transition {name} was interrupted {attempt - 1} times; giving up")
                self._finish(machine, ctx, "failed", error=error, events=[("error", name, error.message)])
                return
            self._store.begin_transition(run_id, index, name, attempt)
            ctx.attempt, ctx.transition, ctx.resumed = attempt, name, resumed
            resumed = False
            try:
                output_json = dump_json(fn(ctx, json.loads(request_json)))
            except Handoff as handoff:
                self._handoff(machine, ctx, name, handoff)
                return
            except Exception as exc:
                self._failed_attempt(machine, ctx, name, attempt, exc)
                return
            next_name = names[index + 1] if index + 1 < len(names) else None
            self._store.complete_transition(run_id, index, name, output_json, ctx._take_progress(), next_name)
            request_json, index, attempt = output_json, index + 1, 0

    def _failed_attempt(self, machine: Machine, ctx: Context, name: str, attempt: int, exc: Exception) -> None:
        run_id = ctx.run_id
        if self._user_canceled(run_id) or (isinstance(exc, Canceled) and not self._stopping):
            self._finish(machine, ctx, "canceled", events=[("error", name, _describe(exc))])
            return
        if self._stopping and ctx.cancel.is_set():
            # interrupted by shutdown, not failed: the same attempt runs again after resume
            self._park(run_id, ctx, attempt=attempt - 1)
            return
        if isinstance(exc, Abort):
            self._finish(machine, ctx, "failed", error=exc.error, events=[("abort", name, _describe(exc.error))])
            return
        if not is_retryable(exc):
            if not isinstance(exc, CapsaError):
                log.error("fsm: run %s %s.%s failed with a bug", run_id, machine.name, name, exc_info=exc)
            error = exc if isinstance(exc, CapsaError) else CapsaError(_describe(exc))
            self._finish(machine, ctx, "failed", error=error, events=[("abort", name, _describe(exc))])
            return
        error = exc if isinstance(exc, CapsaError) else Unavailable(_describe(exc))
        if attempt >= self.retry.max_attempts:
            events: list[EventSpec] = [("error", name, f"{_describe(exc)}; gave up after {attempt} attempts")]
            self._finish(machine, ctx, "failed", error=error, events=events)
            return
        delay = self.retry.delay(attempt, self._rng)
        self._store.set_retry(run_id, time.time() + delay, ctx._take_progress(), [
            ("error", name, _describe(exc)),
            ("retry", name, f"attempt {attempt + 1}/{self.retry.max_attempts} in {delay:.3f}s"),
        ])
        self._timer.add(run_id, self._clock() + delay)
        if self._user_canceled(run_id) and self._timer.remove(run_id):
            self._pool(None).submit(run_id)  # canceled while we were scheduling the retry

    def _handoff(self, machine: Machine, ctx: Context, name: str, handoff: Handoff) -> None:
        target = handoff.defer_to
        if target is not None:
            problem: CapsaError | None = None
            if target == ctx.run_id:
                problem = InvalidArgument(f"run {ctx.run_id} cannot hand off to itself")
            else:
                try:
                    self._store.get(target)
                except NotFound as exc:
                    problem = exc
            if problem is not None:
                self._finish(machine, ctx, "failed", error=problem, events=[("abort", name, _describe(problem))])
                return
            self._finish(machine, ctx, "handed_off", defer_to=target,
                         events=[("handoff", name, f"deferred to run {target}")])
            return
        try:
            output_json = dump_json(handoff.output)
        except (TypeError, ValueError) as exc:
            error = CapsaError(f"handoff output of {machine.name}.{name} is not JSON: {exc}")
            self._finish(machine, ctx, "failed", error=error, events=[("abort", name, error.message)])
            return
        self._finish(machine, ctx, "handed_off", output_json=output_json,
                     events=[("handoff", name, "work already done")])

    def _park(self, run_id: str, ctx: Context, *, attempt: int | None) -> None:
        self._store.set_queued(run_id, attempt=attempt, progress_json=ctx._take_progress())
        self._release(run_id)

    def _finish(self, machine: Machine, ctx: Context, state: str, *, output_json: str | None = None,
                error: CapsaError | None = None, defer_to: str | None = None,
                events: Iterable[EventSpec] = ()) -> None:
        """Run the finalizers, then record the final state (so a crash in between re-runs them)."""
        run_id = ctx.run_id
        pending: list[EventSpec] = list(events)
        current = self._store.get(run_id)
        final = dataclasses.replace(
            current, state=state, output=current.output if output_json is None else json.loads(output_json),
            error_code=error.code if error else None, error_message=error.message if error else None,
            defer_to=defer_to, finished_at=time.time(),
        )
        for finalizer in machine.finalizers:
            try:
                finalizer(ctx, final)
            except Exception as exc:
                label = getattr(finalizer, "__name__", repr(finalizer))
                log.error("fsm: finalizer %s of run %s failed", label, run_id, exc_info=exc)
                pending.append(("error", None, f"finalizer {label}: {_describe(exc)}"))
        self._store.finish(run_id, state, output_json=output_json, error_code=final.error_code,
                           error_message=final.error_message, defer_to=defer_to,
                           progress_json=ctx._take_progress(), events=pending)
        self._release(run_id)
        with self._done:
            self._done.notify_all()
