"""Queues and runs as Prometheus series: depth, in flight, time waited, runs by machine and state."""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest

from capsa.fsm import Context, Engine, Machine
from capsa.metrics.prometheus import PipelineCollector, PipelineStats


def _scrape(engine: Engine, stats: PipelineStats) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(engine, stats))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_queue_depth_in_flight_and_waits_follow_the_runs(make_engine: Callable[..., Engine]) -> None:
    release = threading.Event()
    entered = threading.Semaphore(0)

    def hold(ctx: Context, req: object) -> object:
        entered.release()
        release.wait(10)
        return req

    engine = make_engine(queues={"download": 1, "unpack": 2})
    engine.register(Machine.define("mon.hold", queue="download").start("hold", hold).end())
    first = engine.start("mon.hold", "a", "x", {})
    assert entered.acquire(timeout=5)
    second = engine.start("mon.hold", "b", "x", {})
    stats = {q.name: q for q in engine.queue_stats()}
    assert (stats["download"].in_flight, stats["download"].depth, stats["download"].limit) == (1, 1, 1)
    assert (stats["unpack"].in_flight, stats["unpack"].depth, stats["unpack"].limit) == (0, 0, 2)
    text = _scrape(engine, PipelineStats())
    assert 'capsa_queue_depth{queue="download"} 1.0' in text
    assert 'capsa_queue_in_flight{queue="download"} 1.0' in text
    assert 'capsa_fsm_runs{machine="mon.hold",state="running"} 1.0' in text
    assert 'capsa_fsm_runs{machine="mon.hold",state="queued"} 1.0' in text
    release.set()
    first.wait(timeout=10)
    second.wait(timeout=10)
    done = {q.name: q for q in engine.queue_stats()}["download"]
    assert done.waited_count == 2 and done.depth == 0 and done.in_flight == 0
    text = _scrape(engine, PipelineStats())
    assert 'capsa_queue_wait_seconds_count{queue="download"} 2.0' in text
    assert 'capsa_fsm_runs{machine="mon.hold",state="succeeded"} 2.0' in text


def test_pipeline_durations_and_refusals_are_exported(make_engine: Callable[..., Engine]) -> None:
    stats = PipelineStats()
    stats.pull_seconds(3.0)
    stats.unpack_seconds(0.2)
    stats.unpack_refused("unsafe_archive", "")
    stats.unpack_refused("limit_exceeded", "max_entries")
    stats.limit_refused("download_stall")
    text = _scrape(make_engine(), stats)
    assert "capsa_image_pull_duration_seconds_count 1.0" in text
    assert 'capsa_layer_unpack_duration_seconds_bucket{le="0.5"} 1.0' in text
    assert 'capsa_unpack_refusals_total{class="unsafe_archive"} 1.0' in text
    assert 'capsa_limit_refusals_total{limit="max_entries"} 1.0' in text
    assert 'capsa_limit_refusals_total{limit="download_stall"} 1.0' in text
