"""Fencing under a real partition: a node cut off from etcd (an iptables rule for its cgroup only) kills
its pool job before its lease expires, so the job's next attempt elsewhere never overlaps the old one;
when the partition heals the node rejoins and does not run the job again (ADR 0012, fencing)."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_fixture import Pool, PoolDaemon, running_pool

from capsa.api.gen.capsa.v1 import cluster_pb2 as cpb
from capsa.api.gen.capsa.v1 import cluster_pb2_grpc as cpb_grpc
from capsa.api.gen.capsa.v1 import jobs_pb2 as pb

pytestmark = pytest.mark.slow

UNIFIED = Path("/sys/fs/cgroup/unified")


def _cgroup2_root() -> Path | None:
    for root in (UNIFIED, Path("/sys/fs/cgroup")):
        if (root / "cgroup.procs").exists() and (root / "cgroup.subtree_control").exists():
            return root
    return None


@pytest.fixture
def partitionable_pool(tmp_path: Path) -> Iterator[tuple[Pool, dict[str, Path]]]:
    root = _cgroup2_root()
    if shutil.which("etcd") is None or shutil.which("iptables") is None or root is None:
        pytest.skip("needs etcd, iptables and a cgroup v2 hierarchy")
    token = secrets.token_hex(4)
    groups = {name: root / f"capsa-test-partition-{token}-{name}" for name in ("n0", "n1")}
    for group in groups.values():
        group.mkdir()
    try:
        with running_pool(tmp_path, nodes=2, members=1, cgroups=groups) as pool:
            pool.start_scheduler("s1")
            yield pool, {name: path.relative_to(root) for name, path in groups.items()}
    finally:
        for group in groups.values():
            for _ in range(50):
                with contextlib.suppress(OSError):
                    group.rmdir()
                    break
                time.sleep(0.1)


@contextlib.contextmanager
def partitioned(cgroup: Path, ports: list[int]) -> Iterator[None]:
    """Drop every packet the cgroup's processes send to etcd; nothing else is touched."""
    rule = ["OUTPUT", "-m", "cgroup", "--path", str(cgroup), "-p", "tcp", "-d", "127.0.0.1", "-m", "multiport",
            "--dports", ",".join(map(str, ports)), "-j", "DROP"]
    subprocess.run(["iptables", "-w", "-I", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-w", "-D", *rule], check=True)


def _pool_job(s: cpb_grpc.ClusterServiceStub, job_id: str) -> cpb.PoolJob:
    return s.GetPoolJob(cpb.GetPoolJobRequest(id=job_id), timeout=30)


def _until(what: str, check: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_partitioned_node_kills_its_job_before_the_pool_runs_it_elsewhere(
        partitionable_pool: tuple[Pool, dict[str, Path]]) -> None:
    pool, groups = partitionable_pool
    by_name: dict[str, PoolDaemon] = {d.name: d for d in pool.nodes}
    s = cpb_grpc.ClusterServiceStub(pool.nodes[0].client().channel)
    job = s.SubmitPoolJob(cpb.SubmitPoolJobRequest(job=pb.RunJobRequest(command=["/bin/sleep", "120"]),
                                                   restart="on-failure"), timeout=30)
    _until("the job to run", lambda: _pool_job(s, job.id).state == "RUNNING")
    first = _pool_job(s, job.id)
    old, other = by_name[first.node], by_name["n1" if first.node == "n0" else "n0"]
    etcd_ports = [m.member.client_port for m in pool.etcd]

    with partitioned(groups[old.name], etcd_ports):
        # The old node still answers its API (only etcd is cut off): watch its local job end by fencing.
        with old.client() as client:
            _until("the old node to fence its job", lambda: client.get_job(first.local_id).ended, timeout=10)
            fenced = client.get_job(first.local_id)
        so = cpb_grpc.ClusterServiceStub(other.client().channel)
        _until("the job to run again on the other node",
               lambda: (j := _pool_job(so, job.id)).state == "RUNNING" and j.node == other.name, timeout=15)
        second = _pool_job(so, job.id)
        with other.client() as client:
            restarted = client.get_job(second.local_id)
        # Never both at once: the old attempt ended before the new one started.
        assert fenced.ended_at_ns < restarted.started_at_ns
        assert second.attempt == 2 and f"attempt 1 on {old.name}: LOST" in second.history[0]

    # Healed: the old node rejoins under a new lease and does not start the job again.
    _until("the old node to be READY again", lambda: any(
        n.name == old.name and n.state == "READY" for n in so.ListNodes(cpb.ListNodesRequest(), timeout=30).nodes))
    time.sleep(1.0)
    with old.client() as client:
        assert [j.id for j in client.list_jobs(all=True)] == [first.local_id]
    final = _pool_job(so, job.id)
    assert (final.node, final.attempt, final.state) == (other.name, 2, "RUNNING")
    so.StopPoolJob(cpb.StopPoolJobRequest(id=job.id, grace_seconds=1), timeout=60)
