"""Restart reconciliation: after `kill -9` of the daemon a job is re-adopted and its logs keep flowing;
after `kill -9` of the daemon *and* the supervisor it is FAILED with a reason and nothing of it is left."""

from __future__ import annotations

import os
import signal
import time

from jobs_helpers import (
    force_cleanup_job,
    proc_start_ticks,
    proc_state,
    processes_in_cgroup_named,
    wait_ended,
    wait_for,
    wait_running,
    zygote_pid,
)

from capsa.errors import CapsaError
from tests.fixtures.daemon import RunningDaemon

COUNTER = "i=0; while :; do echo $i; i=$((i+1)); sleep 0.01; done"


def _numbers(data: bytes) -> list[int]:
    # The shell may also print "Terminated" when its sleep gets the stop's SIGTERM.
    return [int(x) for x in data.decode().split() if x.isdigit()]


def _stdout(daemon: RunningDaemon, job_id: str) -> bytes:
    with daemon.client("reader") as client:
        return b"".join(c.data for c in client.stream_logs(job_id))


def test_kill9_of_the_daemon_keeps_the_job_running_and_logging(fresh_daemon: RunningDaemon) -> None:
    with fresh_daemon.client() as client:
        job = client.run_job(["/bin/sh", "-c", COUNTER])
        pid = wait_running(client, job.id).pid
        wait_for(lambda: len(_numbers(_stdout(fresh_daemon, job.id))) > 5, what="output before the crash")
    before = _numbers(_stdout(fresh_daemon, job.id))

    fresh_daemon.kill9()
    time.sleep(0.5)               # the job keeps writing while no daemon runs
    fresh_daemon.start()

    with fresh_daemon.client() as client:
        adopted = client.get_job(job.id)
        assert adopted.state == "RUNNING" and adopted.pid == pid and not adopted.ended
        after = _numbers(_stdout(fresh_daemon, job.id))
        # Written while the daemon was down, persisted by the supervisor, no gap.
        assert after == list(range(len(after)))
        assert len(after) >= len(before) + 10
        later = wait_for(lambda: (n := _numbers(_stdout(fresh_daemon, job.id))) and len(n) > len(after) and n,
                         what="logs to keep growing after the restart")
        assert later == list(range(len(later)))
        # Follow works on the re-adopted job and ends when it is stopped.
        stopped = client.stop_job(job.id, grace_seconds=0.2)
        assert stopped.state == "STOPPED"
        final = _numbers(b"".join(c.data for c in client.stream_logs(job.id, follow=True)))
        assert final == list(range(len(final))) and len(final) >= len(later)
        assert job.id not in [j.id for j in client.list_jobs()]


def test_kill9_of_daemon_and_supervisor_fails_the_job_and_cleans_up(fresh_daemon: RunningDaemon) -> None:
    with fresh_daemon.client() as client:
        job = client.run_job(["/bin/sh", "-c", "sleep 600 & sleep 600 & wait"])
        pid = wait_running(client, job.id).pid
        wait_for(lambda: len(processes_in_cgroup_named(job.id)) >= 3, what="the job's processes")
    started = proc_start_ticks(pid)

    fresh_daemon.kill9()
    fresh_daemon.kill_supervisor()
    # With no capsa process left, the job dies with its supervisor (its PID 1's PR_SET_PDEATHSIG; the
    # kernel then ends its PID namespace): nobody would collect its output or enforce a pool fence.
    wait_for(lambda: not processes_in_cgroup_named(job.id), timeout=5, what="the job to die with its supervisor")
    fresh_daemon.start()

    with fresh_daemon.client() as client:
        final = wait_ended(client, job.id, timeout=10)
        assert final.state == "FAILED"
        assert final.reason and "restart" in final.reason, final.reason
        assert job.id not in [j.id for j in client.list_jobs()]
        # Its logs end instead of following forever.
        assert list(client.stream_logs(job.id, follow=True)) == []
    wait_for(lambda: not processes_in_cgroup_named(job.id), timeout=10, what="the lost job's processes to be gone")
    wait_for(lambda: proc_start_ticks(pid) != started or proc_state(pid) == "Z", timeout=10,
             what="the lost job's PID 1 to be gone")


def test_a_job_that_ends_while_the_daemon_is_down_gets_its_exit_after_restart(fresh_daemon: RunningDaemon) -> None:
    with fresh_daemon.client() as client:
        job = client.run_job(["/bin/sh", "-c", "sleep 0.5; echo done; exit 7"])
        wait_running(client, job.id)
    fresh_daemon.kill9()
    time.sleep(1.0)
    fresh_daemon.start()
    with fresh_daemon.client() as client:
        final = wait_ended(client, job.id, timeout=10)
        assert final.state == "FAILED" and final.exit_code == 7
        assert final.reason == "exited with code 7"
        assert b"".join(c.data for c in client.stream_logs(job.id, follow=True)) == b"done\n"


def test_after_the_zygote_dies_running_jobs_are_not_reported_as_stopped_by_user(
        fresh_daemon: RunningDaemon) -> None:
    with fresh_daemon.client() as client:
        job = client.run_job(["sleep", "600"])
        wait_running(client, job.id)
        try:
            os.kill(zygote_pid(fresh_daemon.supervisor_pid() or 0), signal.SIGKILL)
            time.sleep(1.0)
            after = client.get_job(job.id)
            assert not (after.state == "STOPPED" and after.reason == "stopped by user"), \
                "nobody stopped this job: the supervisor shut down when its zygote died"
        finally:
            force_cleanup_job(job.id)


def test_after_the_zygote_dies_new_jobs_still_start(fresh_daemon: RunningDaemon) -> None:
    with fresh_daemon.client() as client:
        os.kill(zygote_pid(fresh_daemon.supervisor_pid() or 0), signal.SIGKILL)

        def runs() -> bool:
            try:
                job = client.run_job(["/bin/true"])
            except CapsaError:
                return False
            return wait_ended(client, job.id).exit_code == 0

        wait_for(runs, timeout=10, interval=0.5, what="the node to start jobs again after its zygote died")


def test_after_the_supervisor_dies_the_daemon_fails_its_jobs_and_recovers(fresh_daemon: RunningDaemon) -> None:
    with fresh_daemon.client() as client:
        job = client.run_job(["sleep", "600"])
        wait_running(client, job.id)
        try:
            fresh_daemon.kill_supervisor()
            final = wait_ended(client, job.id, timeout=10)
            assert final.state == "FAILED" and final.reason, final
            wait_for(lambda: not processes_in_cgroup_named(job.id), what="the lost job's processes to be gone")
            new = client.run_job(["/bin/true"])
            assert wait_ended(client, new.id).exit_code == 0
        finally:
            force_cleanup_job(job.id)


def test_a_job_run_as_another_user_and_its_children_die_with_the_supervisor(fresh_daemon: RunningDaemon) -> None:
    # The uid switch clears a parent-death signal set before it; it must be set after (stage2.exec_job).
    job_id = fresh_daemon.cli("run", "-d", "--user", "65534:65534", "--", "/bin/sh", "-c",
                              "sleep 600 & sleep 600 & wait", check=True).stdout.decode().strip()
    with fresh_daemon.client() as client:
        pid = wait_running(client, job_id).pid
        wait_for(lambda: len(processes_in_cgroup_named(job_id)) >= 3, what="the job's processes")
    assert os.stat(f"/proc/{pid}").st_uid == 65534
    fresh_daemon.kill9()
    fresh_daemon.kill_supervisor()
    wait_for(lambda: not processes_in_cgroup_named(job_id), timeout=5, what="the job to die with its supervisor")
    fresh_daemon.start()
    with fresh_daemon.client() as client:
        assert wait_ended(client, job_id, timeout=10).state == "FAILED"
