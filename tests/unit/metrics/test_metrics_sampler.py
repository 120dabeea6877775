"""The sampler: CPU percent from consecutive cgroup readings, bounded rings, the last sample in SQLite,
network counters in any of the accepted shapes, and streams that end with the job."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from capsa.errors import NotFound
from capsa.jobs.model import MIGRATIONS as JOB_MIGRATIONS
from capsa.metrics import MetricsSampler, net_counters
from capsa.runtime.cgroups import CgroupStats
from capsa.state import Database

JOB = "a" * 32


class FakeCgroup:
    """Stands in for a JobCgroup in unit tests: stats() reads from a counter we advance."""

    def __init__(self) -> None:
        self.cpu_ns = 0
        self.gone = False

    def stats(self) -> CgroupStats:
        if self.gone:
            raise FileNotFoundError("cgroup removed")
        self.cpu_ns += 50_000_000
        return CgroupStats(cpu_usage_ns=self.cpu_ns, cpu_nr_periods=None, cpu_nr_throttled=None,
                           cpu_throttled_ns=0, memory_current=4096, memory_peak=8192, oom_kills=0,
                           pids_current=3, pids_denied=0, io_read_bytes=10, io_write_bytes=20)


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(tmp_path / "capsa.db")
    database.migrate("jobs", JOB_MIGRATIONS)
    database.execute("INSERT INTO jobs(id, name, command, state, created_ns) VALUES(?,?,?,?,?)",
                     (JOB, "busy", "[]", "RUNNING", 1))
    yield database
    database.close()


def _sampler(db: Database | None, running: list[tuple[str, str]], cg: FakeCgroup, **kw: object) -> MetricsSampler:
    return MetricsSampler(db, lambda: list(running), interval_s=0.05, open_cgroup=lambda _job: cg, **kw)  # type: ignore[arg-type]


def test_cpu_percent_needs_two_readings(db: Database) -> None:
    cg = FakeCgroup()
    sampler = _sampler(db, [(JOB, "busy")], cg)
    first = sampler.sample_once()[0]
    assert first.cpu_percent is None and first.cpu_usage_ns == 50_000_000
    second = sampler.sample_once()[0]
    assert second.cpu_percent is not None and second.cpu_percent > 0
    assert (second.memory_current, second.memory_peak, second.pids, second.io_read_bytes,
            second.io_write_bytes) == (4096, 8192, 3, 10, 20)
    assert second.name == "busy" and second.net_rx_bytes is None


def test_the_ring_is_bounded_and_dropped_when_the_job_stops(db: Database) -> None:
    cg, running = FakeCgroup(), [(JOB, "busy")]
    sampler = _sampler(db, running, cg, history=3)
    for _ in range(5):
        sampler.sample_once()
    assert len(sampler.history(JOB)) == 3
    last = sampler.latest(JOB)
    running.clear()
    sampler.sample_once()
    assert sampler.history(JOB) == [] and sampler.running_latest() == []
    # The last sample outlives the ring in SQLite (and a daemon restart).
    assert sampler.latest(JOB) == last
    assert MetricsSampler(db, list).latest(JOB) == last


def test_the_last_sample_goes_with_its_job(db: Database) -> None:
    sampler = _sampler(db, [(JOB, "busy")], FakeCgroup())
    sampler.sample_once()
    db.execute("DELETE FROM jobs WHERE id = ?", (JOB,))
    assert db.query("SELECT * FROM job_metrics") == []
    sampler.sample_once()   # a sample for a job deleted meanwhile is simply not stored


def test_a_removed_cgroup_is_skipped(db: Database) -> None:
    cg = FakeCgroup()
    sampler = _sampler(db, [(JOB, "busy")], cg)
    cg.gone = True
    assert sampler.sample_once() == []


@pytest.mark.parametrize("value", [
    {"rx_bytes": 5, "tx_bytes": 7}, (5, 7), [5, 7], type("C", (), {"rx_bytes": 5, "tx_bytes": 7})(),
])
def test_network_counters_in_any_accepted_shape(value: object) -> None:
    assert net_counters(value) == (5, 7)
    assert net_counters(None) == (None, None)


def test_network_stats_are_sampled_and_a_failure_means_none(db: Database) -> None:
    calls: list[str] = []

    def network_stats(job_id: str) -> object:
        calls.append(job_id)
        if len(calls) > 1:
            raise OSError("netns gone")
        return {"rx_bytes": 100, "tx_bytes": 200}

    sampler = _sampler(db, [(JOB, "busy")], FakeCgroup(), network_stats=network_stats)
    first = sampler.sample_once()[0]
    assert (first.net_rx_bytes, first.net_tx_bytes) == (100, 200)
    second = sampler.sample_once()[0]
    assert (second.net_rx_bytes, second.net_tx_bytes) == (None, None)


def test_follow_yields_new_samples_and_ends_with_the_job(db: Database) -> None:
    running = [(JOB, "busy")]
    sampler = _sampler(db, running, FakeCgroup())
    sampler.start()
    try:
        ended = threading.Event()
        seen = []
        for sample in sampler.stream(JOB, follow=True, ended=ended.is_set):
            seen.append(sample)
            if len(seen) == 3:
                running.clear()
                ended.set()
        assert len(seen) >= 3
        assert [s.timestamp_ns for s in seen] == sorted({s.timestamp_ns for s in seen})
    finally:
        sampler.close()


def test_a_job_never_sampled_is_not_found() -> None:
    sampler = _sampler(None, [], FakeCgroup())
    with pytest.raises(NotFound, match="no metrics were sampled"):
        list(sampler.stream(JOB, follow=False, ended=lambda: True))
