"""Durable state machines: image pulls/unpacks, capsule imports and workflows run on this engine.

Declare a machine as a chain that reads as the life of a resource, register it, start runs::

    pull = (Machine.define("image.pull", queue="download")
            .start("resolve", resolve).then("fetch", fetch).then("unpack", unpack)
            .end(release_lease))
    engine = Engine(db)                       # queues: download=5, unpack=2 (image ADR-005/008)
    engine.register(pull)
    engine.resume()                           # on daemon start, after registering every machine
    info = engine.start("image.pull", "docker.io/library/alpine:3", "pull", {"ref": ...}).wait()

A transition is a plain function ``(ctx: Context, request) -> response``. The request of the
first transition is the run's request, each next one gets the previous one's response, and the
last response is the run's output. Requests and responses are JSON values (pydantic models and
dataclasses are accepted and stored as JSON); a transition always receives *decoded JSON*, the
same whether the run is fresh or resumed (use ``Model.model_validate(request)`` for types).

Control flow is expressed as values:

- return a response: the transition is complete; its output is persisted with its
  ``transition_complete`` event in one transaction.
- ``raise Handoff(output)``: the work is already done; skip the rest, end ``handed_off``.
  ``raise Handoff(defer_to=run_id)``: another run owns the work; waiters of this run get that
  run's result.
- ``raise Abort(CapsaError(...))`` or any non-retryable ``CapsaError`` (ChecksumMismatch,
  UnsafeArchive, LimitExceeded, NotFound, ...): fail at once, no retry.
- a retryable error (``capsa.errors.is_retryable``: Unavailable, Timeout, connection and
  timeout I/O errors): retry the transition after exponential backoff with jitter, capped, up
  to ``RetryPolicy.max_attempts`` attempts per transition, then fail with the last error.
  The worker slot is released during the wait; the deadline is persisted and survives restart.
- any other exception is a bug: fail at once with code ``internal`` and a message naming the
  exception type and where it was raised (a bug must not loop forever).

Guarantees and rules:

- Dedupe: ``start`` joins the active (queued/running/retry_wait) run for the same
  (machine, resource_id, action), checked and inserted in one ``BEGIN IMMEDIATE`` transaction
  and guarded by a partial unique index, so it holds across threads and processes. The joined
  run keeps its original request.
- Queues: a machine's ``queue`` names a pool of that many worker threads; a run waits in
  ``queued`` (FIFO) until a worker is free and holds it for its whole run except retry waits.
  Machines without a queue share a pool of ``unqueued_workers`` threads. A transition must not
  block waiting for another run on its own queue (it could wait for its own slot); use
  ``Handoff(defer_to=...)`` instead.
- Resume: ``Engine.resume()`` continues every unfinished run at its first transition without a
  recorded output. The engine does not trust that a started transition did nothing or
  everything: transitions MUST be idempotent and check real state; ``ctx.resumed`` tells them
  this is the first step after a restart. An interrupted transition counts as an attempt.
- Cancel: ``Engine.cancel`` persists the request and sets ``ctx.cancel``; the run ends
  ``canceled`` at the next check (before each transition, or when the transition returns or
  raises while canceled). ``ctx.cancel`` is also set by ``shutdown``: then the run is parked
  (``queued``), not canceled, and continues after the next resume.
- Finalizers ``(ctx, final_run_info)`` run once when a run reaches its final state, before that
  state is recorded; they must be idempotent (a crash in between runs them again). Their errors
  are recorded as ``error`` events and never change the outcome.
- Progress: ``ctx.progress(**fields)`` merges into the run's progress JSON, written at most
  every ``progress_interval_s`` and always at the end of the transition.

Persistence (component ``fsm`` of the shared :class:`~capsa.state.db.Database`): ``fsm_runs``
(one row per run: state, request, current transition and attempt, latest output, progress,
error, retry deadline, cancel flag), ``fsm_outputs`` (one row per completed transition) and
``fsm_events`` (per-run sequence: start, transition_start, transition_complete, error, retry,
cancel, handoff, abort, resume, repair (``ctx.repair``: a reused resource was found broken and is
being redone), and exactly one finish whose message is the final state).
Run states: queued, running, retry_wait, succeeded, failed, canceled, handed_off.

One engine per database: two processes executing the same runs is not supported (starting
runs from several threads, and dedupe across processes, is).
"""

from capsa.fsm.engine import DEFAULT_QUEUES, DEFAULT_RETRY, Engine, RunHandle
from capsa.fsm.machine import (
    Abort,
    Context,
    Finalizer,
    Handoff,
    Machine,
    MachineBuilder,
    RetryPolicy,
    Transition,
)
from capsa.fsm.store import ACTIVE_STATES, EVENT_KINDS, TERMINAL_STATES, Event, RunInfo
from capsa.fsm.typed import decode

__all__ = [
    "ACTIVE_STATES",
    "DEFAULT_QUEUES",
    "DEFAULT_RETRY",
    "EVENT_KINDS",
    "TERMINAL_STATES",
    "Abort",
    "Context",
    "Engine",
    "Event",
    "Finalizer",
    "Handoff",
    "Machine",
    "MachineBuilder",
    "RetryPolicy",
    "RunHandle",
    "RunInfo",
    "Transition",
    "decode",
]
