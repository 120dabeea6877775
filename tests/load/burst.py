"""A burst of short jobs from many concurrent clients, with ListJobs probed throughout (shared by
tests/load/test_load_burst.py and bench/bench_load.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from capsa.api.client import CapsaClient
from capsa.errors import CapsaError


@dataclass
class BurstResult:
    jobs: int
    submit_s: float                 # first RunJob sent -> last RunJob answered
    start_span_s: float             # first job started -> last job started (daemon clock)
    list_latencies: list[float] = field(default_factory=list)
    list_errors: list[str] = field(default_factory=list)   # ListJobs calls that failed during the burst
    job_ids: dict[int, str] = field(default_factory=dict)

    @property
    def submit_rate(self) -> float:
        return self.jobs / self.submit_s if self.submit_s else 0.0

    @property
    def start_rate(self) -> float:
        return self.jobs / max(self.start_span_s, self.submit_s / self.jobs, 1e-9)


def run_burst(connect: Callable[[], CapsaClient], *, jobs: int, clients: int, list_limit: int = 1000,
              budget_s: float = 600.0) -> BurstResult:
    """Submit ``jobs`` jobs ``sh -c 'echo N'`` from ``clients`` threads, each with its own client, while
    one more client lists the newest ``list_limit`` jobs in a loop; wait until every job has ended.

    Submitting stops after ``budget_s`` seconds (``BurstResult.job_ids`` then lacks the rest), so a
    slow node fails a test in bounded time instead of running on."""
    ids: dict[int, str] = {}
    lock = threading.Lock()
    done = threading.Event()
    latencies: list[float] = []
    list_errors: list[str] = []

    def submitter(worker: int) -> None:
        with connect() as client:
            for n in range(worker, jobs, clients):
                if time.perf_counter() - t0 > budget_s:
                    return
                job = client.run_job(["sh", "-c", f"echo {n}"], name=f"burst-{n}")
                with lock:
                    ids[n] = job.id

    def lister() -> None:
        # A failed call is recorded, not fatal: the burst goes on and the caller sees every failure.
        with connect() as client:
            while not done.is_set():
                started = time.perf_counter()
                try:
                    client.list_jobs(all=True, limit=list_limit)
                except CapsaError as exc:
                    list_errors.append(f"{type(exc).__name__}: {exc}")
                else:
                    latencies.append(time.perf_counter() - started)
                time.sleep(0.05)

    t0 = time.perf_counter()
    probe = threading.Thread(target=lister, name="burst-lister")
    probe.start()
    try:
        with ThreadPoolExecutor(clients) as pool:
            for f in [pool.submit(submitter, w) for w in range(clients)]:
                f.result()
        submit_s = time.perf_counter() - t0
        with connect() as client:
            pending = set(ids.values())
            started: list[int] = []
            deadline = time.monotonic() + max(60.0, budget_s)
            while pending and time.monotonic() < deadline:
                for job in client.list_jobs(all=True, limit=jobs + 1000):
                    if job.id in pending and job.ended:
                        pending.discard(job.id)
                        started.append(job.started_at_ns)
                if pending:
                    time.sleep(0.2)
            if pending:
                raise AssertionError(f"{len(pending)} burst jobs did not end in time")
    finally:
        done.set()
        probe.join()
    nonzero = [s for s in started if s]
    span = (max(nonzero) - min(nonzero)) / 1e9 if nonzero else 0.0
    return BurstResult(jobs=len(ids), submit_s=submit_s, start_span_s=span, list_latencies=latencies,
                       list_errors=list_errors, job_ids=ids)
