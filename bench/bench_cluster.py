"""The pool on etcd: placement rate, submit→running (pool vs direct), leader failover, lost-node detection,
and the scheduler at 100 and 1,000 registered (simulated) nodes.

Run (as root):  .venv/bin/python bench/bench_cluster.py [--latency-runs 50] [--failovers 3] [--json]

One run starts 3 etcd members (mutual TLS, loopback), 3 capsa daemons (lease TTL 2 s) and 2 schedulers
(lease TTL 2 s), as tests/e2e/cluster does. Figures:
- submit→running: wall clock from just before the call to the job's ``started_at_ns`` on its node, for
  ``SubmitPoolJob`` and for a direct ``RunJob`` on one node, interleaved run by run (same load);
- placements/s: the real scheduler binding jobs to N fake nodes registered straight in etcd (labels
  ``fake=yes``; the jobs carry that constraint, so no real node runs them) — 3, 100 and 1,000 nodes;
  with key counts and the bytes of one node record;
- leader failover: SIGKILL of the leading scheduler → the stand-by holds the election key;
- fencing without a daemon: SIGKILL of a daemon only → its supervisor kills the pool job (its processes are
  gone) → the node key expires;
- lost node: SIGKILL of a daemon and its supervisor → its node key expires → its job is LOST.
Prints the figures (the lead collects them into docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repository root: tests.fixtures
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e" / "cluster"))

from cluster_fixture import Pool, running_pool  # noqa: E402
from common import command_line, machine_summary, pct, scratch_dir  # noqa: E402

from capsa.api.gen.capsa.v1 import cluster_pb2 as cpb  # noqa: E402
from capsa.api.gen.capsa.v1 import cluster_pb2_grpc as cpb_grpc  # noqa: E402
from capsa.api.gen.capsa.v1 import jobs_pb2 as pb  # noqa: E402
from capsa.cluster.etcd import Op  # noqa: E402
from capsa.cluster.model import ELECTION, NodeRecord, PoolJob, keys  # noqa: E402
from capsa.cluster.workflows import submit_ops  # noqa: E402


def _until(check: object, timeout: float = 60, step: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(step)


def submit_to_running(pool: Pool, runs: int) -> dict[str, list[float]]:
    s = cpb_grpc.ClusterServiceStub(pool.nodes[0].client().channel)
    direct = pool.nodes[0].client()
    out: dict[str, list[float]] = {"pool": [], "direct": []}
    _until(lambda: pool.store().leader(ELECTION) is not None)   # steady state: a leader, and one job placed
    warm = s.SubmitPoolJob(cpb.SubmitPoolJobRequest(job=pb.RunJobRequest(command=["/bin/true"])), timeout=30)
    _until(lambda: s.GetPoolJob(cpb.GetPoolJobRequest(id=warm.id), timeout=30).started_at_ns > 0)
    for _ in range(runs):
        t0 = time.time_ns()
        job = s.SubmitPoolJob(cpb.SubmitPoolJobRequest(job=pb.RunJobRequest(command=["/bin/true"])), timeout=30)
        _until(lambda job=job: s.GetPoolJob(cpb.GetPoolJobRequest(id=job.id), timeout=30).started_at_ns > 0)
        out["pool"].append((s.GetPoolJob(cpb.GetPoolJobRequest(id=job.id), timeout=30).started_at_ns - t0) / 1e9)
        t0 = time.time_ns()
        local = direct.run_job(["/bin/true"])
        out["direct"].append((local.started_at_ns - t0) / 1e9)
    return out


def placements(pool: Pool, nodes: int, jobs: int) -> dict[str, float]:
    """The real scheduler binding ``jobs`` jobs onto ``nodes`` fake nodes registered in etcd."""
    etcd = pool.store()
    lease = etcd.grant(300)
    try:
        record_bytes = 0
        batch: list[Op] = []
        for i in range(nodes):
            record = NodeRecord(name=f"fake{i:04d}", address="127.0.0.1:1", lease=lease, cpus=64, memory_mb=256000,
                                labels={"fake": "yes"}, images=[f"registry.example/app{j}:1" for j in range(20)],
                                max_jobs=10_000).dump()
            record_bytes = len(record)
            batch.append(Op.put(keys.node(f"fake{i:04d}"), record, lease=lease))
            if len(batch) == 100:   # etcd's default --max-txn-ops is 128
                etcd.txn([], batch)
                batch = []
        if batch:
            etcd.txn([], batch)
        range_t0 = time.monotonic()
        etcd.range(keys.NODES)
        range_s = time.monotonic() - range_t0
        ids = []
        t0 = time.monotonic()
        for _ in range(jobs // 50):
            ops = []
            for _ in range(50):
                job = PoolJob(id=__import__("secrets").token_hex(16), spec={"command": ["/bin/true"]},
                              constraints={"fake": "yes"})
                ids.append(job.id)
                ops.extend(submit_ops(job))
            etcd.txn([], ops)
        _until(lambda: etcd.count(keys.PENDING) == 0, timeout=300, step=0.02)
        elapsed = time.monotonic() - t0
        total_keys = etcd.count("/capsa/v1/")
        return {"nodes": nodes, "jobs": jobs, "placements_per_s": jobs / elapsed, "node_record_bytes": record_bytes,
                "range_nodes_ms": range_s * 1000, "keys": total_keys}
    finally:
        etcd.revoke(lease)   # fake nodes and their assignments go with it
        for prefix in (keys.JOBS, keys.PENDING):
            etcd.delete(prefix, prefix=True)


def leader_failover(pool: Pool, rounds: int) -> list[float]:
    etcd = pool.store()
    times = []
    for _ in range(rounds):
        _until(lambda: etcd.leader(ELECTION) is not None)
        leader = etcd.leader(ELECTION).value.decode()  # type: ignore[union-attr]
        index = next(i for i, p in enumerate(pool.schedulers) if p.args[-3] == leader and p.poll() is None)
        proc = pool.schedulers[index]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        t0 = time.monotonic()
        _until(lambda old=leader: (kv := etcd.leader(ELECTION)) is not None and kv.value.decode() != old, step=0.01)
        times.append(time.monotonic() - t0)
        pool.schedulers[index] = pool.start_scheduler(leader)
        pool.schedulers.pop()   # start_scheduler appended it; it now sits at ``index``
    return times


def _job_pids(local_id: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if local_id in (proc / "cgroup").read_text():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def fencing_without_daemon(pool: Pool) -> dict[str, float]:
    """SIGKILL of a daemon only: its supervisor kills the pool job at the lease deadline it was last handed."""
    etcd = pool.store()
    s = cpb_grpc.ClusterServiceStub(pool.nodes[0].client().channel)
    job = s.SubmitPoolJob(cpb.SubmitPoolJobRequest(job=pb.RunJobRequest(command=["/bin/sleep", "60"]),
                                                   constraints={"bench": "victim"}), timeout=30)
    _until(lambda: s.GetPoolJob(cpb.GetPoolJobRequest(id=job.id), timeout=30).state == "RUNNING")
    local_id = s.GetPoolJob(cpb.GetPoolJobRequest(id=job.id), timeout=30).local_id
    victim = pool.nodes[2]
    victim.kill9()
    t0 = time.monotonic()
    gone = expired = 0.0
    while not (gone and expired):
        now = time.monotonic() - t0
        if not gone and not _job_pids(local_id):
            gone = now
        if not expired and etcd.get(keys.node(victim.name)) is None:
            expired = now
        if now > 30:
            raise RuntimeError("the job or the lease outlived 30 s")
        time.sleep(0.01)
    victim.start()   # re-adopts its supervisor; rejoins the pool
    _until(lambda: etcd.get(keys.node(victim.name)) is not None)
    s.StopPoolJob(cpb.StopPoolJobRequest(id=job.id), timeout=60)
    return {"processes_gone_s": gone, "lease_expired_s": expired}


def lost_node(pool: Pool) -> dict[str, float]:
    etcd = pool.store()
    s = cpb_grpc.ClusterServiceStub(pool.nodes[0].client().channel)
    job = s.SubmitPoolJob(cpb.SubmitPoolJobRequest(job=pb.RunJobRequest(command=["/bin/sleep", "60"]),
                                                   constraints={"bench": "victim"}), timeout=30)
    _until(lambda: s.GetPoolJob(cpb.GetPoolJobRequest(id=job.id), timeout=30).state == "RUNNING")
    victim = pool.nodes[2]
    victim.kill9()
    victim.kill_supervisor()
    t0 = time.monotonic()
    _until(lambda: etcd.get(keys.node(victim.name)) is None, step=0.01)
    expired = time.monotonic() - t0
    _until(lambda: s.GetPoolJob(cpb.GetPoolJobRequest(id=job.id), timeout=30).state == "LOST", step=0.01)
    marked = time.monotonic() - t0
    victim.start()   # its reconciliation ends the orphaned sleep before it rejoins
    return {"lease_expired_s": expired, "job_lost_s": marked}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency-runs", type=int, default=50)
    parser.add_argument("--failovers", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = scratch_dir("capsa-bench-cluster-")
    results: dict[str, object] = {"command": command_line(), "machine": machine_summary()}
    with running_pool(root, labels={2: {"bench": "victim"}}) as pool:
        pool.start_scheduler("s1")
        pool.start_scheduler("s2")
        lat = submit_to_running(pool, args.latency_runs)
        results["submit_to_running_ms"] = {k: {"p50": pct(v, 50) * 1000, "p99": pct(v, 99) * 1000}
                                           for k, v in lat.items()}
        results["placement"] = [placements(pool, n, j) for n, j in ((3, 500), (100, 500), (1000, 500))]
        results["leader_failover_s"] = leader_failover(pool, args.failovers)
        results["fencing"] = fencing_without_daemon(pool)
        results["lost_node"] = lost_node(pool)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"$ {results['command']}\n{results['machine']}\n")
    for kind, fig in results["submit_to_running_ms"].items():  # type: ignore[union-attr]
        print(f"submit→running {kind:6}: p50 {fig['p50']:.1f} ms, p99 {fig['p99']:.1f} ms")
    for row in results["placement"]:  # type: ignore[union-attr]
        print(f"placement with {row['nodes']:>4} nodes: {row['placements_per_s']:.0f}/s over {row['jobs']} jobs;"
              f" range(nodes/) {row['range_nodes_ms']:.1f} ms; node record {row['node_record_bytes']} B;"
              f" {row['keys']} keys under /capsa/v1/")
    failovers = results["leader_failover_s"]
    print("leader failover (lease TTL 2 s): " + ", ".join(f"{t:.2f} s" for t in failovers))  # type: ignore[union-attr]
    fence = results["fencing"]
    print(f"daemon killed (supervisor alive, lease TTL 2 s): job processes gone after"  # type: ignore[index]
          f" {fence['processes_gone_s']:.2f} s, lease expired after {fence['lease_expired_s']:.2f} s")  # type: ignore[index]
    lost = results["lost_node"]
    print(f"lost node (lease TTL 2 s): key expired after {lost['lease_expired_s']:.2f} s,"  # type: ignore[index]
          f" job LOST after {lost['job_lost_s']:.2f} s")  # type: ignore[index]
    return 0


if __name__ == "__main__":
    sys.exit(main())
