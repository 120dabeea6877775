"""A node killed with kill -9 (daemon and supervisor): its jobs become LOST, jobs with a restart policy run
again elsewhere, `node ls` shows it LOST; when it comes back it rejoins without running its old jobs."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_fixture import Pool, running_pool

from capsa.api.gen.capsa.v1 import cluster_pb2 as cpb
from capsa.api.gen.capsa.v1 import cluster_pb2_grpc as cpb_grpc
from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from capsa.cluster.model import keys

pytestmark = pytest.mark.slow


@pytest.fixture
def small_pool(tmp_path: Path) -> Iterator[Pool]:
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (scripts/setup.sh installs etcd-server)")
    with running_pool(tmp_path, labels={1: {"role": "victim", "pair": "a"}, 2: {"pair": "a"}}) as p:
        p.start_scheduler("s1")
        yield p


def _jobs(s: cpb_grpc.ClusterServiceStub) -> dict[str, cpb.PoolJob]:
    return {j.id: j for j in s.ListPoolJobs(cpb.ListPoolJobsRequest(all=True), timeout=30).jobs}


def _until(what: str, check: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_killed_node_loses_its_jobs_and_restart_policy_jobs_run_elsewhere(small_pool: Pool) -> None:
    s = cpb_grpc.ClusterServiceStub(small_pool.nodes[0].client().channel)
    sleeper = pb.RunJobRequest(command=["/bin/sleep", "120"])
    pinned = [s.SubmitPoolJob(cpb.SubmitPoolJobRequest(job=sleeper, constraints={"role": "victim"}), timeout=30).id
              for _ in range(2)]
    restartable = [s.SubmitPoolJob(cpb.SubmitPoolJobRequest(job=sleeper, restart="on-failure"), timeout=30).id
                   for _ in range(9)]
    _until("every job running", lambda: all(j.state == "RUNNING" for j in _jobs(s).values()))
    before = _jobs(s)
    on_victim = [i for i in restartable if before[i].node == "n1"]
    assert on_victim, "spread placed no restartable job on n1"

    victim = small_pool.nodes[1]
    victim_local = [before[i].local_id for i in [*pinned, *on_victim]]
    assert all(_job_pids(local) for local in victim_local)
    victim.kill9()
    victim.kill_supervisor()
    killed = time.monotonic()
    # No capsa process is left on n1, yet its jobs die with their supervisor (PR_SET_PDEATHSIG), before
    # the lease can expire and a restart-policy job run elsewhere: never the same job on two nodes.
    _until("n1's job processes to die with their supervisor",
           lambda: not any(_job_pids(local) for local in victim_local), timeout=1.5)
    _until("the pinned jobs to be LOST", lambda: all(_jobs(s)[i].state == "LOST" for i in pinned), timeout=15)
    detected = time.monotonic() - killed
    assert detected < 2 + 3   # lease TTL 2 s, plus a scheduler pass
    after = _jobs(s)
    assert all("node n1 lost" in after[i].reason for i in pinned)
    _until("the restartable jobs to run again elsewhere",
           lambda: all((j := _jobs(s)[i]).state == "RUNNING" and j.node != "n1" for i in on_victim), timeout=15)
    rerun = _jobs(s)
    assert all(rerun[i].attempt == 2 and "attempt 1 on n1: LOST" in rerun[i].history[0] for i in on_victim)
    assert all(rerun[i].attempt == 1 for i in restartable if i not in on_victim)   # the others were untouched
    nodes = {n.name: n.state for n in s.ListNodes(cpb.ListNodesRequest(), timeout=30).nodes}
    assert nodes == {"n0": "READY", "n1": "LOST", "n2": "READY"}
    print(f"\nlost node detected after {detected:.2f}s")

    # Back again: its daemon's reconciliation ends the leftovers before it rejoins; nothing reruns on it.
    victim.start()
    with victim.client() as client:
        _until("n1's leftovers to end", lambda: not client.list_jobs(all=False), timeout=15)
    _until("n1 to be READY", lambda: {n.name: n.state for n in s.ListNodes(cpb.ListNodesRequest(),
                                                                          timeout=30).nodes}["n1"] == "READY")
    time.sleep(1)
    final = _jobs(s)
    assert all(final[i].node != "n1" and final[i].state == "RUNNING" for i in on_victim)
    assert all(final[i].state == "LOST" for i in pinned)
    for job_id in [*pinned, *restartable]:
        s.StopPoolJob(cpb.StopPoolJobRequest(id=job_id, grace_seconds=1), timeout=60)
    assert all(j.ended for j in _jobs(s).values())


def _job_pids(local_id: str) -> list[int]:
    """Host PIDs of the processes in a local job's cgroup (named by its id, v1 and v2 alike)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if local_id in (proc / "cgroup").read_text():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def test_a_node_whose_daemon_dies_has_its_supervisor_kill_its_pool_jobs_before_the_job_runs_elsewhere(
        small_pool: Pool) -> None:
    """kill -9 of the daemon only: the supervisor (which outlives it) kills the pool job at the lease deadline
    the daemon last handed it, before etcd expires the lease and so before the job is placed on another node."""
    s = cpb_grpc.ClusterServiceStub(small_pool.nodes[0].client().channel)
    sleeper = pb.RunJobRequest(command=["/bin/sleep", "120"])
    # Two jobs for the two "pair" nodes: spread puts one on each, so one runs on n1 and n2 can take it over.
    ids = [s.SubmitPoolJob(cpb.SubmitPoolJobRequest(job=sleeper, constraints={"pair": "a"}, restart="always"),
                           timeout=30).id for _ in range(2)]
    _until("both jobs running", lambda: all(_jobs(s)[i].state == "RUNNING" for i in ids))
    job_id = next(i for i in ids if _jobs(s)[i].node == "n1")
    local_id = _jobs(s)[job_id].local_id
    assert _job_pids(local_id)
    store = small_pool.store()
    victim = small_pool.nodes[1]
    victim.kill9()   # the daemon only: its supervisor and the job live on
    killed_ns = time.time_ns()
    supervisor = victim.supervisor_pid()
    assert supervisor and Path(f"/proc/{supervisor}").exists()
    gone_ns = lease_gone_ns = 0
    deadline = time.monotonic() + 15
    while not (gone_ns and lease_gone_ns):
        assert time.monotonic() < deadline, f"processes gone: {gone_ns}, lease gone: {lease_gone_ns}"
        if not gone_ns and not _job_pids(local_id):
            gone_ns = time.time_ns()
        if not lease_gone_ns and store.get(keys.node("n1")) is None:
            lease_gone_ns = time.time_ns()
        time.sleep(0.02)
    assert gone_ns < lease_gone_ns, "the job outlived the lease"
    _until("the job to run again on n2", lambda: (j := _jobs(s)[job_id]).state == "RUNNING" and j.node == "n2",
           timeout=15)
    again = _jobs(s)[job_id]
    assert again.attempt == 2 and "attempt 1 on n1: LOST" in again.history[0]
    assert gone_ns < again.placed_at_ns   # never on two nodes at once
    assert Path(f"/proc/{supervisor}").exists()   # the supervisor did it, alive all along
    print(f"\nfencing without a daemon: job processes gone {(gone_ns - killed_ns) / 1e9:.2f}s after the kill,"
          f" lease expired {(lease_gone_ns - killed_ns) / 1e9:.2f}s, job placed on n2"
          f" {(again.placed_at_ns - killed_ns) / 1e9:.2f}s after it")
    for i in ids:
        s.StopPoolJob(cpb.StopPoolJobRequest(id=i, grace_seconds=1), timeout=60)
