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

pytestmark = pytest.mark.slow


@pytest.fixture
def small_pool(tmp_path: Path) -> Iterator[Pool]:
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (scripts/setup.sh installs etcd-server)")
    with running_pool(tmp_path, labels={1: {"role": "victim"}}) as p:
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
    victim.kill9()
    victim.kill_supervisor()
    killed = time.monotonic()
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
