"""Idempotent submission: the daemon is kill -9'ed in the middle of a burst of 500 submissions and
restarted; the clients resend with the same request ids, and every job runs exactly once."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from tests.fixtures.daemon import RunningDaemon

pytestmark = [pytest.mark.load, pytest.mark.slow]

JOBS = 500
CLIENTS = 10
KILL_AFTER = 150   # submissions answered before the kill


def test_every_job_of_a_burst_runs_exactly_once_across_a_kill_9_and_restart(fresh_daemon: RunningDaemon) -> None:
    answered: dict[int, str] = {}
    lock = threading.Lock()
    enough = threading.Event()

    def submitter(worker: int) -> None:
        with fresh_daemon.client("developer") as client:
            for n in range(worker, JOBS, CLIENTS):
                job = client.run_job(["sh", "-c", f"echo idem-{n}"], name=f"idem-{n}")
                with lock:
                    answered[n] = job.id
                    if len(answered) >= KILL_AFTER:
                        enough.set()

    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(submitter, w) for w in range(CLIENTS)]
        assert enough.wait(60), f"only {len(answered)} submissions answered before the kill"
        fresh_daemon.kill9()           # mid-burst: some requests are in flight, some not sent yet
        time.sleep(1.0)
        fresh_daemon.start()           # the clients' retries (same request ids) reach the new daemon
        for f in futures:
            f.result()

    assert sorted(answered) == list(range(JOBS))
    with fresh_daemon.client("reader") as client:
        deadline = time.monotonic() + 60
        while True:
            jobs = [j for j in client.list_jobs(all=True) if j.name.startswith("idem-")]
            if all(j.ended for j in jobs) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        per_name = Counter(j.name for j in jobs)
        assert {name: n for name, n in per_name.items() if n != 1} == {}, "a submission made two jobs"
        assert len(per_name) == JOBS
        by_id = {j.id: j for j in jobs}
        for n, job_id in answered.items():   # each answer names the one job of its request
            job = by_id[job_id]
            assert job.name == f"idem-{n}"
            assert job.state == "COMPLETED", (n, job.state, job.reason)
            out = b"".join(c.data for c in client.jobs.StreamLogs(pb.StreamLogsRequest(id=job_id), timeout=30))
            assert out == f"idem-{n}\n".encode(), (n, out)   # ran once: one line
