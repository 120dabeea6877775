"""A workflow survives `kill -9` of the daemon: its durable run resumes, running jobs are re-adopted,
jobs that ended while the daemon was down are collected, and no job runs twice."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter

from workflows_helpers import jobs_of, states, steps, submit, wait_workflow

from tests.fixtures.daemon import RunningDaemon


def _run_events(daemon: RunningDaemon, run_id: str) -> list[str]:
    with sqlite3.connect(f"file:{daemon.home / 'capsa.db'}?mode=ro", uri=True) as db:
        return [kind for (kind,) in db.execute("SELECT kind FROM fsm_events WHERE run_id = ? ORDER BY seq", (run_id,))]


def test_kill9_mid_workflow_resumes_re_adopts_and_runs_no_job_twice(fresh_daemon: RunningDaemon) -> None:
    with fresh_daemon.client() as client:
        workflow = submit(client, """\
            name: survivor
            jobs:
              first: {command: /bin/true}
              short:
                command: /bin/sleep
                args: ["1"]
                requires: [{first: COMPLETED}]
              long:
                command: /bin/sh
                args: ["-c", "sleep 3; echo done"]
                requires: [{first: COMPLETED}]
              last:
                command: /bin/true
                requires: "short=COMPLETED AND long=COMPLETED"
            """)
        running = wait_workflow(client, workflow.id, until=lambda w: all(
            steps(w)[n].state == "RUNNING" for n in ("short", "long")))
        before = {name: s.job_id for name, s in steps(running).items() if s.job_id}

    fresh_daemon.kill9()
    time.sleep(1.5)            # `short` ends while no daemon runs; `long` keeps running
    fresh_daemon.start()

    with fresh_daemon.client() as client:
        final = wait_workflow(client, workflow.id, timeout=30)
        ran = jobs_of(client, workflow.id)
        long_job = client.get_job(before["long"])
    assert final.state == "COMPLETED", (final.reason, states(final))
    assert set(states(final).values()) == {"COMPLETED"}
    assert Counter(j.workflow_job for j in ran) == {"first": 1, "short": 1, "long": 1, "last": 1}
    assert {name: steps(final)[name].job_id for name in before} == before, "a started job was started again"
    assert long_job.state == "COMPLETED"
    assert _run_events(fresh_daemon, final.run_id).count("resume") == 1


def test_kill9_while_many_jobs_start_never_starts_one_twice(fresh_daemon: RunningDaemon) -> None:
    jobs = "\n".join(f"  j{i:02d}: {{command: /bin/sleep, args: ['0.3']}}" for i in range(24))
    with fresh_daemon.client() as client:
        workflow = submit(client, f"name: busy\nmax_parallel: 8\njobs:\n{jobs}\n")
        wait_workflow(client, workflow.id, until=lambda w: sum(j.state != "WAITING" for j in w.jobs) >= 10)

    fresh_daemon.kill9()
    fresh_daemon.start()

    with fresh_daemon.client() as client:
        final = wait_workflow(client, workflow.id, timeout=60)
        ran = jobs_of(client, workflow.id)
    assert final.state == "COMPLETED", (final.reason, states(final))
    # A job recorded just before the kill but never handed to the supervisor stays as a FAILED record
    # without a pid; it did not run, so the workflow starting that job again is not a second start.
    started = [j for j in ran if j.pid or j.started_at_ns]
    never = [j for j in ran if not (j.pid or j.started_at_ns)]
    assert all(j.state == "FAILED" and "before the job started" in j.reason for j in never), never
    counts = Counter(j.workflow_job for j in started)
    assert set(counts) == {f"j{i:02d}" for i in range(24)} and set(counts.values()) == {1}, counts
