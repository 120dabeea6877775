"""Retention of finished runs: old ones go, the newest per resource, hand-off targets and referenced runs stay."""

from __future__ import annotations

import time
from collections.abc import Callable

from capsa.fsm import Engine, Machine
from capsa.state.db import Database

MakeEngine = Callable[..., Engine]


def _runs(engine: Engine, resource: str, n: int) -> list[str]:
    return [engine.start("m", resource, "do", {"i": i}).wait(5).run_id for i in range(n)]


def test_old_finished_runs_go_but_the_newest_per_resource_stays(make_engine: MakeEngine, db: Database) -> None:
    engine = make_engine()
    engine.register(Machine.define("m").start("a", lambda ctx, r: r).end())
    a = _runs(engine, "res-a", 3)
    b = _runs(engine, "res-b", 1)
    assert engine.prune_history(finished_before=time.time() - 3600) == 0   # none is that old
    assert engine.prune_history(finished_before=time.time() + 1) == 2
    left = {r.run_id for r in engine.history()}
    assert left == {a[-1], b[0]}                                              # the newest of each resource
    assert engine.events(a[-1])                                               # with its events


def test_runs_another_table_references_are_kept(make_engine: MakeEngine, db: Database) -> None:
    engine = make_engine()
    engine.register(Machine.define("m").start("a", lambda ctx, r: r).end())
    db.execute("CREATE TABLE refs (run_id TEXT NOT NULL)")
    runs = _runs(engine, "res", 3)
    db.execute("INSERT INTO refs(run_id) VALUES(?)", (runs[0],))
    engine.keep_runs_referenced_by("SELECT run_id FROM refs")
    assert engine.prune_history(finished_before=time.time() + 1) == 1
    assert {r.run_id for r in engine.history()} == {runs[0], runs[2]}


def test_unfinished_runs_are_never_pruned(make_engine: MakeEngine) -> None:
    import threading

    gate = threading.Event()
    engine = make_engine()
    engine.register(Machine.define("m").start("a", lambda ctx, r: gate.wait(5) and r).end())
    first = engine.start("m", "res", "one", {})
    engine.start("m", "res", "two", {})
    try:
        assert engine.prune_history(finished_before=time.time() + 1) == 0
    finally:
        gate.set()
    first.wait(5)
