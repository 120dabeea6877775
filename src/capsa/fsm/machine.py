"""Machine declarations: what a durable run does, step by step, and the values that steer it.

Nothing here touches the database; the engine owns persistence, queues and retries.
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from capsa.errors import Canceled, CapsaError, InvalidArgument

if TYPE_CHECKING:
    from capsa.fsm.engine import Engine
    from capsa.fsm.store import RunInfo

__all__ = [
    "Abort",
    "Context",
    "Finalizer",
    "Handoff",
    "Machine",
    "MachineBuilder",
    "RetryPolicy",
    "Transition",
    "dump_json",
]

Request = Any
Response = Any


@dataclass(eq=False)
class Context:
    """What a transition knows about the run it is part of.

    ``cancel`` is set when the run is canceled *or* the engine shuts down: either way the
    transition should stop promptly (poll it, or hand it to a download). ``resumed`` is True
    for the first transition a run executes after :meth:`Engine.resume` picked it up: the
    transition may have run before, partly or fully, so it must check real state.
    """

    run_id: str
    resource_id: str
    action: str
    attempt: int
    cancel: threading.Event
    engine: Engine
    machine: str = ""
    transition: str = ""
    resumed: bool = False
    _progress: dict[str, Any] = field(default_factory=dict, repr=False)
    _progress_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _last_flush: float | None = field(default=None, repr=False)
    _dirty: bool = field(default=False, repr=False)

    def progress(self, **fields: Any) -> None:
        """Merge ``fields`` into the run's progress; persisted at most every progress interval.

        The latest value is always written when the transition ends, so nothing is lost by
        the throttle. Safe to call from helper threads of the transition.
        """
        with self._progress_lock:
            self._progress.update(fields)
            now = self.engine._clock()
            interval = self.engine.progress_interval_s
            if self._last_flush is not None and now - self._last_flush < interval:
                self._dirty = True
                return
            payload = dump_json(self._progress)
            self._last_flush = now
            self._dirty = False
        self.engine._store.set_progress(self.run_id, payload)

    def recall(self, name: str, default: Any = None) -> Any:
        """A progress field as last recorded, also by an attempt before a retry or restart.

        Lets a clock that must not restart with each attempt (a download's stall timer, an
        image's extraction deadline) keep its start in the run's persisted progress.
        """
        with self._progress_lock:
            return self._progress.get(name, default)

    def repair(self, message: str) -> None:
        """Record (as a ``repair`` event of this run, at once) that the transition found a
        resource it would have reused broken and is redoing it, and why (image ADR-006)."""
        self.engine._store.add_events([(self.run_id, [("repair", self.transition or None, message)])])

    def check_cancel(self) -> None:
        """Raise :class:`Canceled` if the run was canceled (or the engine is stopping)."""
        if self.cancel.is_set():
            raise Canceled(f"run {self.run_id} canceled during {self.transition or 'its run'}")

    def _take_progress(self) -> str | None:
        """The progress JSON not yet persisted (None when the database is up to date)."""
        with self._progress_lock:
            if not self._dirty:
                return None
            self._dirty = False
            self._last_flush = self.engine._clock()
            return dump_json(self._progress)


Transition = Callable[[Context, Request], Response]
Finalizer = Callable[[Context, "RunInfo"], None]


class Handoff(Exception):
    """End the run early.

    ``Handoff(output)``: the work is already done; the run ends ``handed_off`` with ``output``
    and the remaining transitions are skipped. ``Handoff(defer_to=run_id)``: another run owns
    the work; waiters of this run wait for that run's result instead.
    """

    def __init__(self, output: Any = None, *, defer_to: str | None = None) -> None:
        if output is not None and defer_to is not None:
            raise InvalidArgument("Handoff takes an output or defer_to, not both")
        self.output = output
        self.defer_to = defer_to
        super().__init__(f"deferred to run {defer_to}" if defer_to else "work already done")


class Abort(Exception):
    """Stop the run now: unrecoverable. Wraps the :class:`CapsaError` that waiters receive."""

    def __init__(self, error: CapsaError | str) -> None:
        self.error = error if isinstance(error, CapsaError) else CapsaError(str(error))
        super().__init__(str(self.error))


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with "equal jitter", capped, for at most ``max_attempts`` attempts.

    Attempts are counted per transition (a run that retried ``fetch`` starts ``unpack`` at
    attempt 1). A transition interrupted by a crash counts as an attempt too, so a transition
    that kills the daemon cannot loop forever across restarts.
    """

    base_s: float = 0.5
    cap_s: float = 30.0
    max_attempts: int = 5

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.cap_s < 0 or self.max_attempts < 1:
            raise InvalidArgument(f"invalid retry policy {self!r}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based), in [ceiling/2, ceiling]."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(max(attempt - 1, 0), 64))
        return ceiling / 2 + (rng or random).uniform(0.0, ceiling / 2)


@dataclass(frozen=True)
class Machine:
    """A named sequence of transitions, optionally bound to a concurrency queue.

    Usually built with the chain builder, which reads as the life of a resource::

        Machine.define("image.pull", queue="download").start("resolve", f).then("fetch", g).end(fin)

    Finalizers run once, when a run reaches its final state (succeeded, failed, canceled or
    handed off), with the context and the final :class:`RunInfo`; they must be idempotent
    because a crash before the final state is recorded runs them again on resume.
    """

    name: str
    transitions: tuple[tuple[str, Transition], ...]
    queue: str | None = None
    finalizers: tuple[Finalizer, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise InvalidArgument("a machine needs a name")
        if not self.transitions:
            raise InvalidArgument(f"machine {self.name!r} has no transitions")
        seen: set[str] = set()
        for name, fn in self.transitions:
            if not name or name in seen:
                raise InvalidArgument(f"machine {self.name!r}: transition names must be unique and non-empty ({name!r})")
            if not callable(fn):
                raise InvalidArgument(f"machine {self.name!r}: transition {name!r} is not callable")
            seen.add(name)

    @property
    def transition_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.transitions)

    @staticmethod
    def define(name: str, *, queue: str | None = None) -> MachineBuilder:
        return MachineBuilder(name, queue)


class MachineBuilder:
    """``define(...).start(name, fn).then(name, fn)...end(*finalizers)`` → :class:`Machine`."""

    def __init__(self, name: str, queue: str | None) -> None:
        self._name = name
        self._queue = queue
        self._transitions: list[tuple[str, Transition]] = []

    def start(self, name: str, fn: Transition) -> MachineBuilder:
        if self._transitions:
            raise InvalidArgument(f"machine {self._name!r}: start() must come first, and once")
        self._transitions.append((name, _typed_if_annotated(fn)))
        return self

    def then(self, name: str, fn: Transition) -> MachineBuilder:
        if not self._transitions:
            raise InvalidArgument(f"machine {self._name!r}: then() before start()")
        self._transitions.append((name, _typed_if_annotated(fn)))
        return self

    def end(self, *finalizers: Finalizer) -> Machine:
        return Machine(self._name, tuple(self._transitions), self._queue, tuple(finalizers))


def _typed_if_annotated(fn: Transition) -> Transition:
    """A transition annotated ``(ctx, req: SomeDataclass)`` receives that dataclass (see ``typed``)."""
    from capsa.fsm.typed import request_type, typed

    cls = request_type(fn) if callable(fn) else None
    return typed(fn, cls) if cls is not None else fn


def _encode_default(value: object) -> object:
    dump = getattr(value, "model_dump", None)  # pydantic models, without importing pydantic
    if callable(dump):
        return dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def dump_json(value: Any) -> str:
    """Canonical JSON for requests, outputs and progress (pydantic models and dataclasses too)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False, default=_encode_default)
