"""The engine on a real SQLite file: ordering, dedupe, queues, error classification, handoff."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from capsa.errors import (
    AlreadyExists,
    CapsaError,
    ChecksumMismatch,
    DeviceExistsError,
    DeviceNotFoundError,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    PoolFullError,
    Unauthorized,
    Unavailable,
    UnsafeArchive,
)
from capsa.fsm import Abort, Context, Engine, Handoff, Machine, RetryPolicy, RunInfo
from tests.fixtures.waiting import wait_for

MakeEngine = Callable[..., Engine]


def _hold(ctx: Context, gate: threading.Event) -> bool:
    """Block a transition until the test opens ``gate`` (or the run is canceled / the engine stops)."""
    while not gate.wait(0.01):
        ctx.check_cancel()
    return True


def _kinds(engine: Engine, run_id: str) -> list[str]:
    return [e.kind for e in engine.events(run_id)]


def _append(name: str, seen: list[Any]) -> Callable[[Context, Any], Any]:
    def step(ctx: Context, request: Any) -> Any:
        seen.append((name, request))
        return {"trail": [*request["trail"], name], "n": request["n"] * 10 + len(request["trail"])}

    step.__name__ = name
    return step


def test_three_transitions_run_in_order_and_each_gets_the_previous_output(make_engine: MakeEngine) -> None:
    seen: list[Any] = []
    engine = make_engine()
    engine.register(
        Machine.define("chain")
        .start("a", _append("a", seen))
        .then("b", _append("b", seen))
        .then("c", _append("c", seen))
        .end()
    )

    info = engine.start("chain", "res-1", "build", {"trail": [], "n": 1}).wait(5)

    assert info.state == "succeeded"
    assert info.output == {"trail": ["a", "b", "c"], "n": 1012}
    assert seen == [
        ("a", {"trail": [], "n": 1}),
        ("b", {"trail": ["a"], "n": 10}),
        ("c", {"trail": ["a", "b"], "n": 101}),
    ]
    assert _kinds(engine, info.run_id) == ["start"] + ["transition_start", "transition_complete"] * 3 + [
        "finish"
    ]


def test_ten_threads_starting_the_same_resource_action_share_one_run(make_engine: MakeEngine) -> None:
    executions: list[str] = []
    barrier = threading.Barrier(10)
    all_started = threading.Event()
    engine = make_engine()

    def slow(ctx: Context, request: Any) -> Any:
        executions.append(ctx.run_id)
        _hold(ctx, all_started)  # still running while every caller starts
        return {"digest": "sha256:" + request["ref"]}

    engine.register(Machine.define("image.pull", queue="download").start("fetch", slow).end())
    results: list[tuple[str, bool, RunInfo]] = []
    started: list[Any] = []
    lock = threading.Lock()

    def caller() -> None:
        barrier.wait()
        handle = engine.start("image.pull", "alpine:3", "pull", {"ref": "alpine"})
        with lock:
            started.append(handle)
            if len(started) == 10:
                all_started.set()
        info = handle.wait(10)
        with lock:
            results.append((handle.run_id, handle.joined, info))

    threads = [threading.Thread(target=caller) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)

    assert len(results) == 10
    assert len({run_id for run_id, _, _ in results}) == 1
    assert sorted(joined for _, joined, _ in results) == [False] + [True] * 9
    assert all(info.output == {"digest": "sha256:alpine"} for _, _, info in results)
    assert len(executions) == 1
    assert len(engine.history(resource_id="alpine:3")) == 1
    # dedupe is for *active* runs only: once finished, the same request starts a fresh run
    again = engine.start("image.pull", "alpine:3", "pull", {"ref": "alpine"})
    assert again.run_id != results[0][0] and not again.joined
    again.wait(5)


def test_a_queue_never_runs_more_transitions_at_once_than_its_limit(make_engine: MakeEngine) -> None:
    lock = threading.Lock()
    current, peak = 0, 0
    engine = make_engine(queues={"download": 2})

    def counted(ctx: Context, request: Any) -> Any:
        nonlocal current, peak
        with lock:
            current += 1
            peak = max(peak, current)
        time.sleep(0.05)
        with lock:
            current -= 1
        return request

    engine.register(Machine.define("dl", queue="download").start("a", counted).then("b", counted).end())
    handles = [engine.start("dl", f"blob-{i}", "fetch", i) for i in range(6)]

    assert [h.wait(10).output for h in handles] == list(range(6))
    assert peak == 2


def test_queued_runs_start_in_fifo_order(make_engine: MakeEngine) -> None:
    order: list[int] = []
    gate = threading.Event()
    engine = make_engine(queues={"unpack": 1})

    def step(ctx: Context, request: int) -> int:
        order.append(request)
        _hold(ctx, gate)
        return request

    engine.register(Machine.define("unpack", queue="unpack").start("unpack", step).end())
    handles = [engine.start("unpack", f"layer-{i}", "unpack", i) for i in range(5)]
    wait_for(lambda: order == [0])
    assert [h.info().state for h in handles] == ["running"] + ["queued"] * 4
    gate.set()
    for h in handles:
        h.wait(5)
    assert order == [0, 1, 2, 3, 4]


def test_machines_share_the_engine_and_unqueued_runs_do_not_wait_for_a_busy_queue(
    make_engine: MakeEngine,
) -> None:
    gate = threading.Event()
    engine = make_engine(queues={"download": 1})
    engine.register(
        Machine.define("pull", queue="download").start("fetch", lambda ctx, r: _hold(ctx, gate)).end()
    )
    engine.register(Machine.define("activate").start("mount", lambda ctx, r: f"mounted {r}").end())

    blocked = [engine.start("pull", f"img-{i}", "pull") for i in range(2)]
    wait_for(lambda: blocked[0].info().state == "running")
    assert engine.start("activate", "img-0", "activate", "img-0").wait(5).output == "mounted img-0"
    assert [h.info().state for h in blocked] == ["running", "queued"]
    gate.set()
    assert [h.wait(5).output for h in blocked] == [True, True]


def test_a_retryable_error_is_retried_with_backoff_then_succeeds(make_engine: MakeEngine) -> None:
    attempts: list[int] = []
    first_failure = threading.Event()
    engine = make_engine(retry=RetryPolicy(base_s=0.3, cap_s=1, max_attempts=5))

    def flaky(ctx: Context, request: Any) -> Any:
        attempts.append(ctx.attempt)
        if len(attempts) < 3:
            first_failure.set()
            raise Unavailable(f"registry returned 503 (try {len(attempts)})")
        return "fetched"

    engine.register(Machine.define("pull").start("fetch", flaky).end())
    handle = engine.start("pull", "alpine", "pull")
    assert first_failure.wait(5)
    wait_for(lambda: handle.info().state == "retry_wait")

    assert handle.wait(5).output == "fetched"
    assert attempts == [1, 2, 3]
    events = engine.events(handle.run_id)
    assert [e.kind for e in events].count("retry") == 2
    starts = [e.at for e in events if e.kind == "transition_start"]
    # equal jitter: the n-th wait lies in [ceiling/2, ceiling] with ceiling = base * 2**(n-1)
    assert starts[1] - starts[0] >= 0.15 - 0.01
    assert starts[2] - starts[1] >= 0.3 - 0.01


@pytest.mark.parametrize(
    "error",
    [
        ChecksumMismatch("layer sha256:ab has digest sha256:cd"),
        UnsafeArchive("entry ../../etc/passwd escapes the root"),
        LimitExceeded("file count 100001 > 100000"),
        NotFound("no such image"),
        Unauthorized("bad token"),
        DeviceExistsError("thin 7 exists"),
        PoolFullError("pool out of data space"),
        DeviceNotFoundError("no device"),
        InvalidArgument("bad reference"),
    ],
)
def test_a_non_retryable_error_aborts_at_once(make_engine: MakeEngine, error: CapsaError) -> None:
    calls: list[int] = []
    engine = make_engine()

    def failing(ctx: Context, request: Any) -> Any:
        calls.append(ctx.attempt)
        raise error

    engine.register(Machine.define("pull").start("fetch", failing).then("unpack", lambda c, r: r).end())
    handle = engine.start("pull", "alpine", "pull")

    with pytest.raises(type(error)) as raised:
        handle.wait(5)
    assert raised.value.message == error.message
    info = handle.info()
    assert (info.state, info.attempt, info.error_code, info.current_transition) == (
        "failed",
        1,
        error.code,
        "fetch",
    )
    assert calls == [1]
    kinds = _kinds(engine, handle.run_id)
    assert "retry" not in kinds and kinds[-2:] == ["abort", "finish"]


def test_a_bug_aborts_and_names_the_exception_type(make_engine: MakeEngine) -> None:
    calls: list[int] = []
    engine = make_engine()

    def buggy(ctx: Context, request: dict[str, Any]) -> Any:
        calls.append(1)
        return request["missing"]

    engine.register(Machine.define("pull").start("fetch", buggy).end())
    handle = engine.start("pull", "alpine", "pull", {})

    with pytest.raises(CapsaError) as raised:
        handle.wait(5)
    assert raised.value.code == "internal"
    assert "KeyError: 'missing'" in raised.value.message and "in buggy" in raised.value.message
    assert calls == [1] and handle.info().attempt == 1


def test_abort_stops_the_run_with_the_wrapped_error(make_engine: MakeEngine) -> None:
    engine = make_engine()

    def limited(ctx: Context, request: Any) -> Any:
        raise Abort(LimitExceeded("image is 11 GiB, limit 10 GiB"))

    engine.register(Machine.define("pull").start("fetch", limited).end())
    with pytest.raises(LimitExceeded, match="limit 10 GiB"):
        engine.start("pull", "huge", "pull").wait(5)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (lambda n: Unavailable(f"S3 down #{n}"), Unavailable),
        (lambda n: ConnectionResetError(f"peer reset #{n}"), Unavailable),
    ],
)
def test_retries_stop_after_max_attempts_with_the_last_error(
    make_engine: MakeEngine, raised: Callable[[int], Exception], expected: type[CapsaError]
) -> None:
    calls: list[int] = []
    engine = make_engine(retry=RetryPolicy(base_s=0.01, cap_s=0.02, max_attempts=3))

    def down(ctx: Context, request: Any) -> Any:
        calls.append(ctx.attempt)
        raise raised(ctx.attempt)

    engine.register(Machine.define("pull").start("fetch", down).end())
    handle = engine.start("pull", "alpine", "pull")

    with pytest.raises(expected, match="#3"):
        handle.wait(5)
    assert calls == [1, 2, 3]
    assert handle.info().attempt == 3
    kinds = _kinds(engine, handle.run_id)
    assert kinds.count("retry") == 2 and kinds.count("error") == 3 and kinds[-1] == "finish"


def test_handoff_with_output_skips_the_remaining_transitions(make_engine: MakeEngine) -> None:
    later: list[str] = []
    engine = make_engine()

    def already_there(ctx: Context, request: Any) -> Any:
        raise Handoff({"snapshot": "sha256:ab", "cached": True})

    engine.register(
        Machine.define("pull")
        .start("check", already_there)
        .then("fetch", lambda c, r: later.append("fetch"))
        .then("unpack", lambda c, r: later.append("unpack"))
        .end()
    )
    info = engine.start("pull", "alpine", "pull").wait(5)

    assert (info.state, info.output) == ("handed_off", {"snapshot": "sha256:ab", "cached": True})
    assert later == []
    assert _kinds(engine, info.run_id)[-2:] == ["handoff", "finish"]


def test_handoff_defer_to_makes_waiters_wait_for_the_other_run(make_engine: MakeEngine) -> None:
    gate = threading.Event()
    engine = make_engine()
    engine.register(Machine.define("pull").start("fetch", lambda c, r: _hold(c, gate) and "layer-done").end())

    def defer(ctx: Context, owner: str) -> Any:
        raise Handoff(defer_to=owner)

    engine.register(Machine.define("import").start("claim", defer).end())
    owner = engine.start("pull", "sha256:ab", "fetch")
    follower = engine.start("import", "capsule-x", "import", owner.run_id)

    wait_for(lambda: follower.info().state == "handed_off")
    assert follower.info().defer_to == owner.run_id
    assert not follower.done()
    gate.set()
    info = follower.wait(5)
    assert (info.run_id, info.output) == (owner.run_id, "layer-done")
    assert follower.done()


def test_handoff_to_a_missing_run_fails(make_engine: MakeEngine) -> None:
    engine = make_engine()

    def defer(ctx: Context, request: Any) -> Any:
        raise Handoff(defer_to="no-such-run")

    engine.register(Machine.define("import").start("claim", defer).end())
    with pytest.raises(NotFound):
        engine.start("import", "capsule-x", "import").wait(5)


def test_latest_output_and_progress_are_queryable_while_running(make_engine: MakeEngine) -> None:
    in_b, release = threading.Event(), threading.Event()
    engine = make_engine(progress_interval_s=60)

    def b(ctx: Context, request: Any) -> Any:
        ctx.progress(bytes=10, total=100)  # the first update is written at once
        ctx.progress(bytes=50)  # throttled: kept in memory until the transition ends
        in_b.set()
        _hold(ctx, release)
        ctx.progress(bytes=100)
        return "b-done"

    engine.register(Machine.define("pull").start("a", lambda c, r: {"manifest": "m1"}).then("b", b).end())
    handle = engine.start("pull", "alpine", "pull")
    assert in_b.wait(5)
    running = handle.info()
    assert (running.state, running.current_transition, running.output) == ("running", "b", {"manifest": "m1"})
    assert running.progress == {"bytes": 10, "total": 100}
    release.set()
    final = handle.wait(5)
    assert (final.output, final.progress) == ("b-done", {"bytes": 100, "total": 100})


class _PullRequest(BaseModel):
    ref: str
    platform: str = "linux/amd64"


class _Resolved(BaseModel):
    ref: str
    digest: str


def test_pydantic_models_travel_as_json_between_transitions(make_engine: MakeEngine) -> None:
    engine = make_engine()

    def resolve(ctx: Context, request: dict[str, Any]) -> _Resolved:
        req = _PullRequest.model_validate(request)
        return _Resolved(ref=req.ref, digest=f"sha256:{len(req.platform)}")

    def fetch(ctx: Context, request: dict[str, Any]) -> dict[str, str]:
        return {"fetched": _Resolved.model_validate(request).digest}

    engine.register(Machine.define("pull").start("resolve", resolve).then("fetch", fetch).end())
    info = engine.start("pull", "alpine", "pull", _PullRequest(ref="alpine:3")).wait(5)
    assert info.request == {"ref": "alpine:3", "platform": "linux/amd64"}
    assert info.output == {"fetched": "sha256:11"}


def test_finalizers_see_the_final_state_and_their_errors_are_recorded(make_engine: MakeEngine) -> None:
    seen: list[tuple[str, Any]] = []
    engine = make_engine()

    def record(ctx: Context, info: RunInfo) -> None:
        seen.append((info.state, info.output))

    def broken(ctx: Context, info: RunInfo) -> None:
        raise OSError("lease release failed")

    engine.register(Machine.define("pull").start("a", lambda c, r: 42).end(record, broken))
    info = engine.start("pull", "alpine", "pull").wait(5)

    assert info.state == "succeeded" and seen == [("succeeded", 42)]
    errors = [e.message for e in engine.events(info.run_id) if e.kind == "error"]
    assert len(errors) == 1 and "finalizer broken: OSError: lease release failed" in errors[0]


def test_history_filters_and_orders_newest_first_and_events_are_sequenced(make_engine: MakeEngine) -> None:
    engine = make_engine()
    engine.register(Machine.define("pull").start("a", lambda c, r: r).end())
    engine.register(Machine.define("unpack").start("a", lambda c, r: r).end())
    first = engine.start("pull", "r1", "pull", 1).wait(5)
    second = engine.start("pull", "r1", "pull", 2).wait(5)
    other = engine.start("unpack", "r1", "unpack", 3).wait(5)
    engine.start("pull", "r2", "pull", 4).wait(5)

    assert [i.run_id for i in engine.history(resource_id="r1")] == [other.run_id, second.run_id, first.run_id]
    assert [i.output for i in engine.history(machine="pull")] == [4, 2, 1]
    assert [i.output for i in engine.history(resource_id="r1", machine="pull", limit=1)] == [2]
    assert len(engine.history()) == 4
    events = engine.events(first.run_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [(e.kind, e.transition) for e in events] == [
        ("start", None),
        ("transition_start", "a"),
        ("transition_complete", "a"),
        ("finish", None),
    ]
    assert events[-1].message == "succeeded"
    assert all(a.at <= b.at for a, b in zip(events, events[1:], strict=False))
    with pytest.raises(NotFound):
        engine.events("no-such-run")
    assert engine.prune(finished_before=time.time() + 1) == 4
    assert engine.history() == []


def test_start_and_register_reject_bad_input(make_engine: MakeEngine) -> None:
    engine = make_engine()
    with pytest.raises(InvalidArgument, match="unknown queue"):
        engine.register(Machine.define("m", queue="nope").start("a", lambda c, r: r).end())
    machine = Machine.define("m").start("a", lambda c, r: r).end()
    engine.register(machine)
    engine.register(machine)  # the same declaration again is fine
    with pytest.raises(AlreadyExists):
        engine.register(Machine.define("m").start("b", lambda c, r: r).end())
    with pytest.raises(NotFound):
        engine.start("unknown", "r", "a")
    with pytest.raises(InvalidArgument):
        engine.start("m", "r", "a", {"x": object()})
    with pytest.raises(InvalidArgument):
        engine.start("m", "", "a")
    with pytest.raises(NotFound):
        engine.get("no-such-run")
