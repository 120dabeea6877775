"""Capsule push, pull and GC as durable runs: deduplicated, cancellable, resumed, in history.

Real parts: the engine on SQLite, the capsule store, and the moto S3 server of the fixtures.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from capsa.capsules import CapsuleStore
from capsa.capsules.distribution import CapsuleDistribution
from capsa.capsules.machines import CAPSULE_GC, CAPSULE_PULL, CAPSULE_PUSH, CapsuleGcPolicy, PullRequest
from capsa.errors import Canceled
from capsa.fsm import Context, Engine, Machine, RetryPolicy
from capsa.images.sources import S3Config
from capsa.state.db import Database
from tests.fixtures.servers import MotoServer

FAST = RetryPolicy(base_s=0.01, cap_s=0.05, max_attempts=3)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parts(tmp_path: Path, moto_server: MotoServer) -> Iterator[tuple[Database, CapsuleStore, S3Config, Clock]]:
    db = Database(tmp_path / "capsa.db")
    clock = Clock()
    yield db, CapsuleStore(tmp_path / "capsules", db, clock=clock), S3Config().with_env(moto_server.env), clock
    db.close()


@pytest.fixture
def engines(parts: tuple[Database, CapsuleStore, S3Config, Clock]) -> Iterator[Callable[..., Engine]]:
    made: list[Engine] = []

    def make(**kwargs: object) -> Engine:
        engine = Engine(parts[0], retry=FAST, **kwargs)  # type: ignore[arg-type]
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.shutdown(timeout=10)


def _tree(root: Path, text: str) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(text)
    (root / "sub" / "b.txt").write_text(text * 3)
    return root


def _blocker(engine: Engine) -> tuple[threading.Event, threading.Event]:
    """Hold the only download worker, so capsule runs started meanwhile wait in the queue."""
    entered, release = threading.Event(), threading.Event()

    def hold(ctx: Context, req: object) -> object:
        entered.set()
        release.wait(20)
        return req

    engine.register(Machine.define("test.hold", queue="download").start("hold", hold).end())
    engine.start("test.hold", "x", "hold", {})
    assert entered.wait(10)
    return entered, release


def test_push_and_pull_are_runs_in_the_history(parts: tuple[Database, CapsuleStore, S3Config, Clock],
                                               engines: Callable[..., Engine], s3_bucket: str, tmp_path: Path) -> None:
    _, store, s3, _ = parts
    engine = engines()
    dist = CapsuleDistribution(store, s3=s3, engine=engine)
    made = store.create("runs", "1.0.0", _tree(tmp_path / "t", "runs"))
    pushed = dist.push("runs@1.0.0", f"s3://{s3_bucket}/c/")
    store.remove("runs", "1.0.0")
    pulled = dist.pull(pushed.location)
    assert pulled.digest == made.digest and pulled.path.is_dir()
    assert [r.state for r in engine.history(machine=CAPSULE_PUSH)] == ["succeeded"]
    assert [(r.resource_id, r.state) for r in engine.history(machine=CAPSULE_PULL)] == [(pushed.location, "succeeded")]
    report = dist.gc(unused=False)
    assert report.removed_versions == () and [r.state for r in engine.history(machine=CAPSULE_GC)] == ["succeeded"]


def test_pulls_of_one_source_share_a_run_and_a_queued_pull_can_be_canceled(
        parts: tuple[Database, CapsuleStore, S3Config, Clock], engines: Callable[..., Engine], s3_bucket: str,
        tmp_path: Path) -> None:
    _, store, s3, _ = parts
    engine = engines(queues={"download": 1, "unpack": 1})
    dist = CapsuleDistribution(store, s3=s3, engine=engine)
    store.create("shared", "2.0.0", _tree(tmp_path / "t", "shared"))
    location = dist.push_now("shared@2.0.0", f"s3://{s3_bucket}/c/").location
    store.remove("shared", "2.0.0")
    _, release = _blocker(engine)
    first = engine.start(CAPSULE_PULL, location, "pull", PullRequest(location))
    second = engine.start(CAPSULE_PULL, location, "pull", PullRequest(location))
    assert second.joined and second.run_id == first.run_id
    other = engine.start(CAPSULE_PULL, location + "x", "pull", PullRequest(location + "x"))
    other.cancel()
    with pytest.raises(Canceled):
        other.wait(timeout=10)
    release.set()
    assert first.wait(timeout=30).state == "succeeded"
    assert store.get("shared", "2.0.0").path.is_dir()


def test_a_pull_interrupted_by_a_restart_resumes(parts: tuple[Database, CapsuleStore, S3Config, Clock],
                                                 engines: Callable[..., Engine], s3_bucket: str,
                                                 tmp_path: Path) -> None:
    db, store, s3, _ = parts
    first = engines(queues={"download": 1, "unpack": 1})
    dist = CapsuleDistribution(store, s3=s3, engine=first)
    store.create("later", "3.0.0", _tree(tmp_path / "t", "later"))
    location = dist.push_now("later@3.0.0", f"s3://{s3_bucket}/c/").location
    store.remove("later", "3.0.0")
    _, release = _blocker(first)
    run = first.start(CAPSULE_PULL, location, "pull", PullRequest(location))
    first.shutdown(wait=False)  # the daemon goes away with the pull still queued
    release.set()
    second = engines()
    CapsuleDistribution(store, s3=s3, engine=second)  # the next daemon registers the machines
    second.register(Machine.define("test.hold", queue="download").start("hold", lambda ctx, req: req).end())
    second.resume()
    assert second.handle(run.run_id).wait(timeout=30).state == "succeeded"
    assert store.get("later", "3.0.0").path.is_dir()


def test_the_gc_policy_removes_old_unused_versions_and_keeps_pins(
        parts: tuple[Database, CapsuleStore, S3Config, Clock], engines: Callable[..., Engine],
        tmp_path: Path) -> None:
    _, store, s3, clock = parts
    engine = engines()
    CapsuleDistribution(store, s3=s3, engine=engine)
    store.create("old", "1.0.0", _tree(tmp_path / "o", "old"))
    store.create("kept", "1.0.0", _tree(tmp_path / "k", "kept"))
    store.pin("kept", "1.0.0")
    clock.now += timedelta(days=8).total_seconds()
    store.create("new", "1.0.0", _tree(tmp_path / "n", "new"))
    policy = CapsuleGcPolicy(engine, interval_s=3600, older_than_s=timedelta(days=7).total_seconds())
    report = policy.run_once()
    assert report.removed_versions == ("old@1.0.0",)
    assert sorted(v.ref for v in store.list()) == ["kept@1.0.0", "new@1.0.0"]
    assert [r.state for r in engine.history(machine=CAPSULE_GC)] == ["succeeded"]
