"""Standbys in the supervisor (capsa.runtime.standby): asked for while idle, sent the next start directly."""

from __future__ import annotations

import time

import pytest
from sup_fakes import Harness

from capsa.errors import CapsaError
from capsa.runtime.protocol import ProcState, ZygoteStandby, ZygoteStart
from tests.fixtures.waiting import wait_for


def _ready(h: Harness) -> int:
    return wait_for(lambda: h.supervisor._standby is not None and h.supervisor._standby.pid, what="a ready standby", interval=0.005)


def test_an_idle_supervisor_asks_for_one_standby_and_the_next_start_runs_on_it(standby_harness: Harness) -> None:
    h = standby_harness
    pid = _ready(h)
    time.sleep(0.05)   # idle for five more idle periods: still one standby, never a second order
    assert [type(o) for o in h.zygote.orders] == [ZygoteStandby]
    rec = h.client.start(h.spec("/bin/true"))
    assert rec.state == ProcState.RUNNING and rec.pid == pid   # known at once: no Forked report needed
    assert ZygoteStart not in [type(o) for o in h.zygote.orders]   # the zygote never saw that start
    assert h.supervisor.standbys_used == 1
    h.processes.exit(pid, 3 << 8)
    wait_for(lambda: next(r for r in h.client.list() if r.job_id == rec.job_id).state == ProcState.EXITED, what="exit", interval=0.005)
    assert next(r for r in h.client.list() if r.job_id == rec.job_id).exit_code == 3


def test_starts_in_a_burst_go_through_the_zygote_and_a_standby_comes_only_after(standby_harness: Harness) -> None:
    h = standby_harness
    _ready(h)
    h.supervisor.standby_idle_s = 0.5   # the burst below takes far less than that between two starts
    records = [h.client.start(h.spec("/quick")) for _ in range(20)]
    assert all(r.state in (ProcState.RUNNING, ProcState.EXITED) for r in records)
    kinds = [type(o) for o in h.zygote.orders]
    assert kinds == [ZygoteStandby] + [ZygoteStart] * 19 and h.supervisor.standbys_used == 1
    assert _ready(h) and [type(o) for o in h.zygote.orders][-1] is ZygoteStandby   # once idle again


def test_every_start_runs_once_whether_on_a_standby_or_through_the_zygote(standby_harness: Harness) -> None:
    h = standby_harness
    for i in range(30):
        h.client.start(h.spec("/quick"))
        time.sleep(0.002 * (i % 10))   # gaps around the idle period: some starts find a standby
    kinds = [type(o) for o in h.zygote.orders]
    assert kinds.count(ZygoteStart) + h.supervisor.standbys_used == 30
    assert h.supervisor.standbys_used >= 1
    assert kinds.count(ZygoteStandby) - h.supervisor.standbys_used <= 1   # never more than one waiting


def test_an_unused_standby_that_dies_is_dropped_its_exit_kept_for_no_job_and_replaced(
        standby_harness: Harness) -> None:
    h = standby_harness
    first = _ready(h)
    h.processes.exit(first, 9)   # killed before any start used it
    second = wait_for(lambda: h.supervisor._standby is not None and h.supervisor._standby.pid != first
                      and h.supervisor._standby.pid, what="a new standby", interval=0.005)
    assert first not in h.supervisor.early_exits and first not in h.supervisor.by_pid
    rec = h.client.start(h.spec("/bin/true"))
    assert rec.pid == second


def test_a_zygote_that_cannot_make_standbys_is_asked_less_and_less_and_starts_still_work(
        standby_harness: Harness) -> None:
    h = standby_harness
    h.zygote.standbys = False   # each order's socket closes unanswered, as when the clone fails
    wait_for(lambda: h.supervisor._standby_failures >= 4, what="repeated failures", interval=0.005)
    time.sleep(0.2)
    asked = [type(o) for o in h.zygote.orders].count(ZygoteStandby)
    # Idle 10 ms doubled per failure: 10+20+40+80+160 ms ... at most a handful in that time, not one per 10 ms.
    assert asked <= 7, asked
    rec = h.client.start(h.spec("/bin/true"))
    assert rec.state == ProcState.RUNNING and rec.pid >= 100_000
    assert ZygoteStart in [type(o) for o in h.zygote.orders]


def test_a_start_failing_after_it_went_to_a_standby_runs_nothing_and_forgets_the_standby(
        standby_harness: Harness) -> None:
    h = standby_harness
    pid = _ready(h)
    h.driver.fail_create = RuntimeError("boom")
    spec = h.spec()
    with pytest.raises(CapsaError, match="boom"):
        h.client.start(spec)
    h.driver.fail_create = None
    wait_for(lambda: spec.job_id in h.zygote.not_started, what="the standby to see the go pipe close", interval=0.005)
    wait_for(lambda: pid not in h.supervisor.abandoned_pids, what="its exit to be reaped and dropped", interval=0.005)
    assert pid not in h.supervisor.early_exits and pid not in h.supervisor.by_pid
    assert h.client.start(h.spec()).state == ProcState.RUNNING


def test_shutdown_lets_an_unused_standby_go(standby_harness: Harness) -> None:
    h = standby_harness
    pid = _ready(h)
    h.client.shutdown()
    h.thread.join(10)
    wait_for(lambda: pid not in h.processes.alive, what="the standby to exit at EOF", interval=0.005)


@pytest.mark.parametrize(("raw", "expected"), [("", 0.02), ("50", 0.05), ("0", None), ("2.5", 0.0025)])
def test_the_standby_idle_time_comes_from_the_environment(
        raw: str, expected: float | None, monkeypatch: pytest.MonkeyPatch) -> None:
    from capsa.runtime.supervisor import standby_idle_from_env

    monkeypatch.setenv("CAPSA_STANDBY_IDLE_MS", raw)
    assert standby_idle_from_env() == expected


@pytest.mark.parametrize("raw", ["fast", "-1", "nan", "inf"])
def test_a_bad_standby_idle_time_stops_with_a_line_naming_it(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from capsa.runtime.supervisor import standby_idle_from_env

    monkeypatch.setenv("CAPSA_STANDBY_IDLE_MS", raw)
    with pytest.raises(SystemExit, match="CAPSA_STANDBY_IDLE_MS"):
        standby_idle_from_env()
