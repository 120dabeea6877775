"""NodeService.GetPipeline's mapping: a real Engine on a SQLite file, with stand-in pull and layer-fetch
machines held mid-run, read through ImageService.pulls_in_flight and NodeServicer.GetPipeline."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capsa.api.servicers.jobs import NodeServicer, wait_quantile
from capsa.fsm import Context, Engine, Machine, RetryPolicy
from capsa.fsm.queues import WAIT_BUCKETS, QueueStats
from capsa.images.pull import FETCH, PULL
from capsa.images.service import ImageService
from capsa.state.db import Database

REF = "registry.test/slow/big:1"
LAYERS = [{"digest": "sha256:" + "a" * 64, "size": 1000}, {"digest": "sha256:" + "b" * 64, "size": 3000}]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = Database(tmp_path / "capsa.db")
    eng = Engine(db, queues={"download": 1, "unpack": 2}, retry=RetryPolicy(base_s=0.01, cap_s=0.05, max_attempts=2))
    yield eng
    eng.shutdown(timeout=5)
    db.close()


def _images(engine: Engine) -> ImageService:
    # Only the engine is read by pulls_in_flight; the real service would register the real pull
    # machines, which need a registry, a content store and a snapshotter.
    service = object.__new__(ImageService)
    service.engine = engine
    return service


def test_get_pipeline_reports_queues_and_pulls_of_images_not_stored(engine: Engine) -> None:
    release = threading.Event()
    started = threading.Semaphore(0)

    def fetch(ctx: Context, req: Any) -> Any:
        # The first layer is done, the second a quarter fetched when the pull is looked at.
        if req["layer"]["digest"] == LAYERS[0]["digest"]:
            return req
        ctx.progress(bytes=750)
        started.release()
        release.wait(10)
        return req

    def pull(ctx: Context, req: Any) -> Any:
        ctx.progress(phase="fetching layers")
        started.release()
        release.wait(10)
        return req

    def hold(ctx: Context, req: Any) -> Any:
        started.release()
        release.wait(10)
        return req

    engine.register(Machine.define(FETCH, queue="unpack").start("fetch", fetch).end())
    engine.register(Machine.define(PULL).start("resolve", pull).end())
    engine.register(Machine.define("test.hold", queue="download").start("hold", hold).end())
    handles = [engine.start(PULL, REF, "pull", {"ref": REF})]
    handles.append(engine.start(FETCH, LAYERS[0]["digest"], "fetch", {"ref": REF, "layer": LAYERS[0]}))
    handles[-1].wait(timeout=10)
    handles.append(engine.start(FETCH, LAYERS[1]["digest"], "fetch", {"ref": REF, "layer": LAYERS[1]}))
    handles += [engine.start("test.hold", name, "x", {}) for name in ("one", "two", "three")]
    for _ in range(3):   # the pull, the second layer and the first hold are in their transitions
        assert started.acquire(timeout=10)
    try:
        servicer = NodeServicer(cgroup_version=2, snapshotter="overlay", engine=engine, images=_images(engine))
        got = servicer.GetPipeline(None, None)
        queues = {q.name: q for q in got.queues}
        assert (queues["download"].depth, queues["download"].in_flight, queues["download"].limit) == (2, 1, 1)
        assert (queues["unpack"].depth, queues["unpack"].in_flight, queues["unpack"].limit) == (0, 1, 2)
        assert queues["unpack"].waited_count == 2 and queues["unpack"].wait_p99_seconds > 0
        assert len(got.pulls) == 1
        p = got.pulls[0]
        assert (p.ref, p.run_id, p.state, p.phase) == (REF, handles[0].run_id, "running", "fetching layers")
        assert (p.layers_done, p.layers_total, p.bytes_done, p.bytes_total) == (1, 2, 1750, 4000)
        assert p.started_at_ns > 0
    finally:
        release.set()
        for handle in handles:
            handle.wait(timeout=10)
    # A waiter wakes when the run is recorded finished, a moment before its worker is counted free.
    deadline = time.monotonic() + 5
    while True:
        after = servicer.GetPipeline(None, None)
        idle = all(q.depth == 0 and q.in_flight == 0 for q in after.queues)
        if idle or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert list(after.pulls) == [] and idle, after


def test_wait_quantiles_are_bucket_bounds() -> None:
    def stats(per_bucket: list[int]) -> QueueStats:
        cumulative = [sum(per_bucket[: i + 1]) for i in range(len(per_bucket))]
        return QueueStats("q", 1, 0, 0, sum(per_bucket), 0.0, tuple(cumulative))

    none = [0] * len(WAIT_BUCKETS)
    assert wait_quantile(stats(none), 0.5) == 0.0
    mostly_fast = [98, 0, 0, 2, 0, 0, 0, 0, 0]   # 98 runs under 10 ms, 2 under 1 s
    assert wait_quantile(stats(mostly_fast), 0.5) == WAIT_BUCKETS[0]
    assert wait_quantile(stats(mostly_fast), 0.99) == 1
    # Runs past the last bound are in no bucket: the quantile reports that bound.
    overflow = QueueStats("q", 1, 0, 0, 10, 0.0, tuple([0] * len(WAIT_BUCKETS)))
    assert wait_quantile(overflow, 0.5) == WAIT_BUCKETS[-1]
