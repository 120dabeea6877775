"""2,000 short jobs from 20 concurrent clients: every one accepted, ended and logged exactly, with no
stall. Issue 15's targets (>= 100 jobs/s, ListJobs p99 <= 250 ms during the burst) are measured by
bench/bench_load.py beside runc (docs/BENCHMARKS.md, "api-load"; ADR-0017): 40-101 starts/s and
ListJobs p99 40-157 ms on this 2-core machine at load averages 7-28, the spread being the machine's
other work. The floors here are what held at the worst of those loads, with a margin: a regression to
the old daemon (31-78 starts/s, ListJobs p99 381-578 ms) fails the ListJobs bound, and one to the
failures the issue reported (1.2-8.5 jobs/s, ps p99 2.3 s) fails both."""

from __future__ import annotations

import pytest
from burst import run_burst
from load_helpers import percentile

from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from tests.fixtures.daemon import RunningDaemon

pytestmark = [pytest.mark.load, pytest.mark.slow]

JOBS = 2000
CLIENTS = 20
MIN_START_RATE = 25.0    # jobs/s: a floor against stalls, not the target (see the docstring)
MAX_LIST_P99 = 0.3       # s: above the worst measured under load (157 ms), below every old figure


def test_a_burst_of_2000_jobs_from_20_clients_is_accepted_run_and_logged_exactly(
        fresh_daemon: RunningDaemon) -> None:
    # At the floor rate the submissions take 133 s; the budget fails a slower node within three minutes.
    result = run_burst(lambda: fresh_daemon.client("developer"), jobs=JOBS, clients=CLIENTS, budget_s=180)
    assert not result.list_errors, f"ListJobs failed during the burst: {result.list_errors[:3]}"
    p99 = percentile(result.list_latencies, 99)
    print(f"burst: {result.jobs} of {JOBS} jobs from {CLIENTS} clients; submitted at {result.submit_rate:.0f}/s,"
          f" started at {result.start_rate:.0f}/s; ListJobs p99 {p99 * 1e3:.0f} ms"
          f" over {len(result.list_latencies)} calls")
    with fresh_daemon.client("reader") as client:
        states = {j.id: (j.state, j.reason) for j in client.list_jobs(all=True)}
        for n, job_id in result.job_ids.items():   # whatever was accepted ran once and logged exactly
            assert states[job_id][0] == "COMPLETED", (n, states[job_id])
            out = b"".join(c.data for c in client.jobs.StreamLogs(pb.StreamLogsRequest(id=job_id), timeout=30))
            assert out == f"{n}\n".encode(), (n, out)
    assert sorted(result.job_ids) == list(range(JOBS)), f"{len(result.job_ids)} of {JOBS} accepted in the budget"
    assert result.start_rate >= MIN_START_RATE, f"jobs started at {result.start_rate:.0f}/s"
    assert p99 <= MAX_LIST_P99, f"ListJobs p99 {p99 * 1e3:.0f} ms during the burst"
