"""`capsa ps -a` at 10,000 jobs: the daemon serves the newest page fast and the CLI shows the newest
1,000 with a notice, or every job with --last 0."""

from __future__ import annotations

import sqlite3
import statistics
import time
from collections.abc import Iterator

import pytest
from load_helpers import percentile

from tests.fixtures.daemon import RunningDaemon, running_daemon

pytestmark = [pytest.mark.load, pytest.mark.slow]

TOTAL = 10_000


def _clone_jobs(home, template_id: str, total: int) -> None:   # type: ignore[no-untyped-def]
    """``total`` ended jobs copied from a real one (only id, name and creation time differ)."""
    db = sqlite3.connect(home / "capsa.db")
    try:
        cols = [r[1] for r in db.execute("PRAGMA table_info(jobs)")]
        varying = {"id", "name", "created_ns", "request_id"}
        kept = [c for c in cols if c not in varying]
        row = db.execute(f"SELECT {', '.join(kept)} FROM jobs WHERE id = ?", (template_id,)).fetchone()
        base = time.time_ns() - total * 1_000_000
        db.executemany(
            f"INSERT INTO jobs(id, name, created_ns, request_id, {', '.join(kept)}) VALUES(?,?,?,''"
            f"{', ?' * len(kept)})",
            [(f"{i:032x}", f"clone-{i}", base + i * 1_000_000, *row) for i in range(1, total + 1)])
        db.commit()
    finally:
        db.close()


@pytest.fixture(scope="module")
def ten_thousand(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    """A daemon whose database holds 10,001 ended jobs."""
    with running_daemon(tmp_path_factory.mktemp("ps") / "home") as daemon:
        with daemon.client("developer") as client:
            template = client.run_job(["true"], name="template").id
            for _ in range(200):
                if client.get_job(template).ended:
                    break
                time.sleep(0.05)
        daemon.stop()
        _clone_jobs(daemon.home, template, TOTAL)
        daemon.start()
        yield daemon


def test_the_newest_page_is_served_fast_at_10000_jobs_and_pages_walk_every_job(
        ten_thousand: RunningDaemon) -> None:
    with ten_thousand.client("reader") as client:
        client.list_jobs_page(all=True, limit=1000)   # warm
        calls = []
        for _ in range(20):
            t0 = time.perf_counter()
            page = client.list_jobs_page(all=True, limit=1000)
            calls.append(time.perf_counter() - t0)
        assert len(page.jobs) == 1000 and page.next_page_token
        assert page.jobs[0].name == f"clone-{TOTAL}"   # newest first
        everything = client.list_jobs(all=True)
        assert len(everything) == TOTAL + 1 and len({j.id for j in everything}) == TOTAL + 1
    p99 = percentile(calls, 99)
    print(f"ListJobs(newest 1,000) at {TOTAL} jobs: p50 {percentile(calls, 50) * 1e3:.0f} ms,"
          f" p99 {p99 * 1e3:.0f} ms")
    # 8-10 ms measured at load 15 since ended jobs' messages are kept (ADR-0017; 219-267 ms before); the
    # bound catches a page that decodes every row again or stops using the index.
    assert p99 <= 0.150, f"ListJobs of the newest 1,000 took {p99 * 1e3:.0f} ms (p99) at {TOTAL} jobs"


def test_ps_all_shows_the_newest_1000_with_a_notice_and_last_n_shows_n(ten_thousand: RunningDaemon) -> None:
    result = ten_thousand.cli("ps", "-a", role="reader")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 1 + 1000 and f"clone-{TOTAL}" in lines[1]
    assert "showing the newest 1000 jobs" in result.stderr.decode()
    last = ten_thousand.cli("ps", "-a", "--last", "5", role="reader")
    assert len(last.stdout.decode().splitlines()) == 1 + 5 and not last.stderr


def test_ps_all_answers_well_under_the_old_seconds_at_10000_jobs(ten_thousand: RunningDaemon) -> None:
    """The whole command: CLI start-up, one page from the daemon, the table. Issue 15's target is
    300 ms; 269 ms (median of 5) measured at load 15 (CLI start-up alone is a bare gRPC call plus
    click, see docs/BENCHMARKS.md "cli"), so the bound here is a regression guard with room for a
    busier machine, well under the 1.8-4 s of old."""
    walls = []
    for _ in range(5):
        t0 = time.perf_counter()
        result = ten_thousand.cli("ps", "-a", role="reader")
        walls.append(time.perf_counter() - t0)
        assert result.returncode == 0, result.stderr
    cli = statistics.median(walls)
    print(f"`capsa ps -a` at {TOTAL} jobs: {cli * 1e3:.0f} ms (median of 5)")
    assert cli < 0.8, f"`capsa ps -a` took {cli * 1e3:.0f} ms (median of 5) at {TOTAL} jobs"
