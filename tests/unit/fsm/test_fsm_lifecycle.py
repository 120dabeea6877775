"""Cancel, shutdown and resume within one process (crash/resume with kill -9: tests/integration/fsm)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from capsa.errors import Canceled, FailedPrecondition, Unavailable
from capsa.fsm import Context, Engine, Machine, RetryPolicy, RunInfo
from tests.fixtures.waiting import wait_for

MakeEngine = Callable[..., Engine]


def _hold(ctx: Context, gate: threading.Event) -> bool:
    """Block a transition until the test opens ``gate`` (or the run is canceled / the engine stops)."""
    while not gate.wait(0.01):
        ctx.check_cancel()
    return True


def test_cancel_during_a_transition_ends_canceled_and_runs_finalizers(make_engine: MakeEngine) -> None:
    entered = threading.Event()
    later: list[str] = []
    finalized: list[str] = []
    engine = make_engine()

    def download(ctx: Context, request: Any) -> Any:
        entered.set()
        while not ctx.cancel.wait(0.01):
            pass  # a download loop polling its cancel event
        ctx.check_cancel()
        return "finished anyway"

    engine.register(
        Machine.define("pull", queue="download")
        .start("fetch", download)
        .then("unpack", lambda c, r: later.append("unpack"))
        .end(lambda ctx, info: finalized.append(info.state))
    )
    handle = engine.start("pull", "alpine", "pull")
    assert entered.wait(5)
    engine.cancel(handle.run_id)

    with pytest.raises(Canceled):
        handle.wait(5)
    assert handle.info().state == "canceled"
    assert later == [] and finalized == ["canceled"]
    kinds = [e.kind for e in engine.events(handle.run_id)]
    assert "cancel" in kinds and kinds[-1] == "finish"
    engine.cancel(handle.run_id)  # canceling a finished run changes nothing
    assert handle.info().state == "canceled"


def test_cancel_between_transitions_stops_before_the_next_one(make_engine: MakeEngine) -> None:
    in_a, release = threading.Event(), threading.Event()
    later: list[str] = []
    engine = make_engine()

    def a(ctx: Context, request: Any) -> Any:
        in_a.set()
        release.wait(5)
        return "a-output"  # ignores cancel: its work completes and is kept

    engine.register(Machine.define("pull").start("a", a).then("b", lambda c, r: later.append("b")).end())
    handle = engine.start("pull", "alpine", "pull")
    assert in_a.wait(5)
    engine.cancel(handle.run_id)
    release.set()
    with pytest.raises(Canceled):
        handle.wait(5)
    assert later == [] and handle.info().output == "a-output"


def test_cancel_of_a_queued_run_does_not_wait_for_a_slot(make_engine: MakeEngine) -> None:
    gate = threading.Event()
    ran: list[str] = []
    finalized: list[str] = []
    engine = make_engine(queues={"download": 1})

    def step(ctx: Context, request: str) -> str:
        ran.append(request)
        _hold(ctx, gate)
        return request

    engine.register(
        Machine.define("pull", queue="download")
        .start("fetch", step)
        .end(lambda ctx, info: finalized.append(info.resource_id))
    )
    busy = engine.start("pull", "a", "pull", "a")
    queued = engine.start("pull", "b", "pull", "b")
    wait_for(lambda: ran == ["a"])
    engine.cancel(queued.run_id)

    with pytest.raises(Canceled):
        queued.wait(2)
    assert busy.info().state == "running"
    gate.set()
    assert busy.wait(5).output == "a"
    assert ran == ["a"] and finalized == ["b", "a"]


def test_cancel_during_a_retry_wait_ends_the_run_now(make_engine: MakeEngine) -> None:
    def unavailable(ctx: Context, request: Any) -> Any:
        raise Unavailable("registry 503")

    engine = make_engine(retry=RetryPolicy(base_s=30, cap_s=30, max_attempts=5))
    engine.register(Machine.define("pull").start("fetch", unavailable).end())
    handle = engine.start("pull", "alpine", "pull")
    wait_for(lambda: handle.info().state == "retry_wait")
    started = time.monotonic()
    engine.cancel(handle.run_id)
    with pytest.raises(Canceled):
        handle.wait(5)
    assert time.monotonic() - started < 2


def test_a_retry_wait_survives_a_restart(make_engine: MakeEngine) -> None:
    calls: list[tuple[int, bool]] = []

    def flaky(ctx: Context, request: Any) -> Any:
        calls.append((ctx.attempt, ctx.resumed))
        if len(calls) == 1:
            raise Unavailable("registry 503")
        return "ok"

    machine = Machine.define("pull").start("fetch", flaky).end()
    first = make_engine(retry=RetryPolicy(base_s=1.0, cap_s=1.0, max_attempts=3))
    first.register(machine)
    handle = first.start("pull", "alpine", "pull")
    wait_for(lambda: handle.info().state == "retry_wait")
    first.shutdown()
    waiting = first.get(handle.run_id)
    assert waiting.state == "retry_wait" and waiting.retry_at is not None and waiting.retry_at > time.time()

    second = make_engine(retry=RetryPolicy(base_s=1.0, cap_s=1.0, max_attempts=3))
    second.register(machine)
    assert [h.run_id for h in second.resume()] == [handle.run_id]
    info = second.handle(handle.run_id).wait(5)
    assert info.output == "ok"
    assert calls == [(1, False), (2, True)]
    retry_event = [e for e in second.events(handle.run_id) if e.kind == "transition_start"][-1]
    assert retry_event.at >= waiting.retry_at - 0.01  # the persisted deadline was honoured


def test_shutdown_parks_a_running_transition_and_resume_continues_it(make_engine: MakeEngine) -> None:
    a_calls: list[int] = []
    b_calls: list[tuple[Any, bool, int]] = []
    in_b = threading.Event()

    def a(ctx: Context, request: Any) -> Any:
        a_calls.append(1)
        return {"blob": "sha256:ab"}

    def b(ctx: Context, request: Any) -> Any:
        b_calls.append((request, ctx.resumed, ctx.attempt))
        in_b.set()
        if len(b_calls) == 1:
            ctx.cancel.wait(5)  # a long download, interrupted by the shutdown
            ctx.check_cancel()
        return "unpacked"

    finalized: list[str] = []
    machine = (
        Machine.define("pull").start("a", a).then("b", b).end(lambda ctx, info: finalized.append(info.state))
    )
    first = make_engine()
    first.register(machine)
    handle = first.start("pull", "alpine", "pull")
    assert in_b.wait(5)
    first.shutdown(timeout=5)
    with pytest.raises(Unavailable):
        handle.wait(1)
    parked = first.get(handle.run_id)
    assert (parked.state, parked.current_transition, parked.attempt) == ("queued", "b", 0)
    assert finalized == []

    second = make_engine()
    second.register(machine)
    second.resume()
    info = second.handle(handle.run_id).wait(5)
    assert info.output == "unpacked" and finalized == ["succeeded"]
    assert a_calls == [1]  # the completed transition is not run again
    assert b_calls == [({"blob": "sha256:ab"}, False, 1), ({"blob": "sha256:ab"}, True, 1)]
    assert [e.kind for e in second.events(handle.run_id)].count("resume") == 1


def _blocker(ctx: Context, request: Any) -> Any:
    ctx.cancel.wait(5)
    ctx.check_cancel()


def _leave_queued_run(make_engine: MakeEngine, machine: Machine) -> str:
    """A run of ``machine`` left 'queued' by a daemon that shut down while its queue was full."""
    engine = make_engine(queues={"download": 1})
    engine.register(Machine.define("blocker", queue="download").start("block", _blocker).end())
    engine.register(machine)
    engine.start("blocker", "x", "block")
    handle = engine.start(machine.name, "alpine", "pull")
    engine.shutdown()
    assert handle.info().state == "queued"
    return handle.run_id


def test_a_cancel_recorded_before_restart_is_honoured_on_resume(make_engine: MakeEngine) -> None:
    finalized: list[str] = []
    machine = (
        Machine.define("pull", queue="download")
        .start("fetch", lambda c, r: "should not run")
        .end(lambda ctx, info: finalized.append(info.state))
    )
    run_id = _leave_queued_run(make_engine, machine)
    fresh = make_engine()
    fresh.register(machine)
    fresh.cancel(run_id)
    assert fresh.get(run_id).state == "queued"
    fresh.resume()
    with pytest.raises(Canceled):
        fresh.handle(run_id).wait(5)
    assert finalized == ["canceled"]


def test_resume_twice_does_not_run_anything_twice(make_engine: MakeEngine) -> None:
    gate = threading.Event()
    calls: list[str] = []

    def step(ctx: Context, request: Any) -> Any:
        calls.append(ctx.run_id)
        _hold(ctx, gate)
        return "done"

    machine = Machine.define("pull", queue="download").start("fetch", step).end()
    run_id = _leave_queued_run(make_engine, machine)
    second = make_engine()
    second.register(machine)
    assert [h.run_id for h in second.resume()] == [run_id]
    assert [h.run_id for h in second.resume()] == [run_id]
    wait_for(lambda: len(calls) == 1)
    gate.set()
    second.handle(run_id).wait(5)
    assert calls == [run_id]


def test_a_run_whose_machine_changed_shape_fails_instead_of_misfeeding(make_engine: MakeEngine) -> None:
    in_b = threading.Event()

    def b(ctx: Context, request: Any) -> Any:
        in_b.set()
        ctx.cancel.wait(5)
        ctx.check_cancel()

    first = make_engine()
    first.register(Machine.define("pull").start("a", lambda c, r: 1).then("b", b).end())
    handle = first.start("pull", "alpine", "pull")
    assert in_b.wait(5)
    first.shutdown()

    second = make_engine()
    second.register(Machine.define("pull").start("resolve", lambda c, r: 1).then("b", lambda c, r: 2).end())
    second.resume()
    with pytest.raises(FailedPrecondition, match="changed"):
        second.handle(handle.run_id).wait(5)


def test_start_after_shutdown_is_refused_and_progress_survives_parking(make_engine: MakeEngine) -> None:
    in_a = threading.Event()

    def a(ctx: Context, request: Any) -> Any:
        ctx.progress(stage="half")
        ctx.progress(stage="three-quarters")  # throttled, flushed when parked
        in_a.set()
        ctx.cancel.wait(5)
        ctx.check_cancel()

    engine = make_engine(progress_interval_s=60)
    engine.register(Machine.define("pull").start("a", a).end())
    handle = engine.start("pull", "alpine", "pull")
    assert in_a.wait(5)
    engine.shutdown()
    assert engine.get(handle.run_id).progress == {"stage": "three-quarters"}
    with pytest.raises(Unavailable):
        engine.start("pull", "other", "pull")


def test_finalizer_receives_the_final_run_info(make_engine: MakeEngine) -> None:
    seen: list[RunInfo] = []
    engine = make_engine()
    engine.register(
        Machine.define("pull").start("a", lambda c, r: {"ok": r}).end(lambda c, i: seen.append(i))
    )
    info = engine.start("pull", "alpine", "pull", 7).wait(5)
    assert len(seen) == 1
    assert (seen[0].run_id, seen[0].state, seen[0].output) == (info.run_id, "succeeded", {"ok": 7})
