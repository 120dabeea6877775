"""Crash/resume for real: a daemon process is SIGKILLed at random points, then a fresh engine resumes.

The machines live in ``_fsm_crash_worker.py`` (run as the subprocess, imported here for the
expected results). Seeded randomness makes a failure reproducible.
"""

from __future__ import annotations

import importlib.util
import os
import random
import select
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from capsa.errors import Unavailable
from capsa.fsm import ACTIVE_STATES, Engine
from capsa.state.db import Database

WORKER_PATH = Path(__file__).with_name("_fsm_crash_worker.py")
RUNS_PER_TRIAL = 4
TRIALS = 24
SEED = 20251122


def _load_worker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_fsm_crash_worker", WORKER_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


worker = _load_worker()


def _spawn(
    db_path: Path, markers: Path, mode: str, *, max_attempts: int = 5, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(WORKER_PATH),
            str(db_path),
            str(markers),
            mode,
            str(RUNS_PER_TRIAL),
            str(max_attempts),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _wait_started(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "started":
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"worker did not start (rc={proc.returncode}): {line!r} {err}")


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.kill()  # SIGKILL; a no-op if it already finished
    proc.communicate(timeout=10)


def _positions(db_path: Path) -> set[tuple[str, str | None]]:
    db = Database(db_path)
    try:
        rows = db.query(f"SELECT state, current_transition FROM fsm_runs WHERE state IN {ACTIVE_STATES!r}")
        return {(r["state"], r["current_transition"]) for r in rows}
    finally:
        db.close(checkpoint=False)


def _assert_converged(engine: Engine, db: Database, markers: Path) -> int:
    """Everything is done exactly once; returns how many transition executions were repeats."""
    runs = engine.history(machine="crash.demo")
    resources = sorted(run.resource_id for run in runs)
    assert resources == [f"res{i}" for i in range(RUNS_PER_TRIAL)]  # no run lost, none duplicated
    ledger_lines = sorted((markers / "ledger.txt").read_text().splitlines())
    assert ledger_lines == sorted(f"{r} {worker.expected_output(r)['digest']}" for r in resources)
    repeats = 0
    for run in runs:
        expected = worker.expected_output(run.resource_id)
        assert (run.state, run.output) == ("succeeded", expected), run
        assert (markers / f"{run.resource_id}.a").read_bytes() == worker.payload(run.resource_id)
        assert (markers / f"{run.resource_id}.b").read_text() == expected["digest"]
        outputs = db.query(
            "SELECT idx, transition FROM fsm_outputs WHERE run_id = ? ORDER BY idx", (run.run_id,)
        )
        assert [(r["idx"], r["transition"]) for r in outputs] == [(0, "write"), (1, "digest"), (2, "ledger")]
        events = engine.events(run.run_id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        kinds = Counter((e.kind, e.transition) for e in events)
        for name in ("write", "digest", "ledger"):
            assert kinds[("transition_complete", name)] == 1
            assert kinds[("transition_start", name)] >= 1
        assert [e.kind for e in events].count("finish") == 1 and events[-1].kind == "finish"
        assert events[-1].message == "succeeded"
        executions = (markers / f"{run.resource_id}.log").read_text().split()
        repeats += len(executions) - 3
    assert db.integrity_check() == "ok"
    return repeats


@pytest.mark.slow  # ~9 s idle, up to ~20 s on a loaded 2-core host
def test_runs_killed_at_random_points_converge_after_resume(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    observed: set[tuple[str, str | None]] = set()
    repeats = resumed_runs = 0
    for trial in range(TRIALS):
        base = tmp_path / f"trial{trial}"
        markers = base / "markers"
        markers.mkdir(parents=True)
        db_path = base / "capsa.db"
        for round_no in range(rng.randint(1, 3)):
            proc = _spawn(db_path, markers, "start" if round_no == 0 else "resume")
            _wait_started(proc)
            # the runs take ~0.1-0.3 s in total: most kills land inside a transition
            try:
                proc.wait(rng.uniform(0.0, 0.2))
            except subprocess.TimeoutExpired:
                pass
            _kill(proc)
            observed |= _positions(db_path)

        db = Database(db_path)
        engine = worker.make_engine(db, 5)
        try:
            for handle in engine.resume():
                handle.wait(20)
            repeats += _assert_converged(engine, db, markers)
            resumed_runs += sum(
                1 for run in engine.history() if any(e.kind == "resume" for e in engine.events(run.run_id))
            )
        finally:
            engine.shutdown()
            db.close()

    # the kills really landed at different points, and resume really re-ran interrupted work
    assert {t for state, t in observed if state == "running"} >= {"write", "digest", "ledger"}
    assert repeats > 0 and resumed_runs > 0


def test_a_transition_that_kills_the_daemon_every_time_fails_after_max_attempts(tmp_path: Path) -> None:
    db_path, markers = tmp_path / "capsa.db", tmp_path / "markers"
    markers.mkdir()
    poison_env = {worker.POISON_ENV: "1"}
    for mode in ("poison", "resume"):  # attempt 1 and attempt 2 both die with SIGKILL
        proc = _spawn(db_path, markers, mode, max_attempts=2, env=poison_env)
        proc.communicate(timeout=20)
        assert proc.returncode == -9

    db = Database(db_path)
    engine = worker.make_engine(db, 2)
    try:
        (handle,) = engine.resume()
        with pytest.raises(Unavailable, match="interrupted 2 times"):
            handle.wait(10)
        info = handle.info()
        assert (info.state, info.current_transition, info.error_code) == ("failed", "explode", "unavailable")
        assert [e.kind for e in engine.events(handle.run_id)].count("resume") == 2
        assert db.integrity_check() == "ok"
    finally:
        engine.shutdown()
        db.close()
