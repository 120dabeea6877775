"""A pool of three daemons on three etcd members with two schedulers: placement, proxying, workflows,
roles, mutual TLS, and the failures that must change nothing (a scheduler leader, an etcd member)."""

from __future__ import annotations

import collections
import json
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from cluster_fixture import Pool, foreign_etcd_cert

from capsa.api.gen.capsa.v1 import cluster_pb2 as cpb
from capsa.api.gen.capsa.v1 import cluster_pb2_grpc as cpb_grpc
from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from capsa.cluster.etcd import EtcdClient
from capsa.cluster.model import ELECTION, keys
from capsa.errors import Unavailable


def stub(pool: Pool, node: int, role: str = "admin") -> cpb_grpc.ClusterServiceStub:
    return cpb_grpc.ClusterServiceStub(pool.nodes[node].client(role).channel)


def submit(s: cpb_grpc.ClusterServiceStub, *command: str, **kw: Any) -> cpb.PoolJob:
    return s.SubmitPoolJob(cpb.SubmitPoolJobRequest(job=pb.RunJobRequest(command=list(command)), **kw), timeout=30)


def wait_ended(s: cpb_grpc.ClusterServiceStub, job_ids: list[str], timeout: float = 60) -> dict[str, cpb.PoolJob]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = {j.id: j for j in s.ListPoolJobs(cpb.ListPoolJobsRequest(all=True), timeout=30).jobs}
        if all(jobs[i].ended for i in job_ids) or time.monotonic() > deadline:
            return {i: jobs[i] for i in job_ids}
        time.sleep(0.2)


def test_every_node_is_listed_ready_with_its_capacity_and_labels(pool: Pool) -> None:
    nodes = {n.name: n for n in stub(pool, 1, "reader").ListNodes(cpb.ListNodesRequest(), timeout=30).nodes}
    assert sorted(nodes) == ["n0", "n1", "n2"]
    assert all(n.state == "READY" and n.cpus >= 1 and n.memory_mb > 0 for n in nodes.values())
    assert dict(nodes["n2"].labels) == {"disk": "ssd"}
    assert pool.store().get(keys.META_VERSION).value == b"1"


def test_run_pool_attached_prints_output_and_exits_with_the_jobs_code(pool: Pool) -> None:
    result = pool.nodes[0].cli("run", "--pool", "--", "/bin/sh", "-c", "echo out; echo err >&2; exit 3")
    assert result.stdout == b"out\n" and b"err\n" in result.stderr
    assert result.returncode == 3


def test_a_constraint_places_the_job_on_the_labelled_node_and_other_nodes_proxy_logs_and_stop(pool: Pool) -> None:
    job = submit(stub(pool, 0), "/bin/sh", "-c", "echo started; exec sleep 60", constraints={"disk": "ssd"})
    deadline = time.monotonic() + 30
    while (current := stub(pool, 0).GetPoolJob(cpb.GetPoolJobRequest(id=job.id), timeout=30)).state != "RUNNING":
        assert time.monotonic() < deadline, current
        time.sleep(0.1)
    assert current.node == "n2"
    logs = pool.nodes[1].cli("logs", "--pool", job.id[:12], check=True)   # n1 serves, n2 owns
    assert logs.stdout == b"started\n"
    assert pool.nodes[1].cli("logs", "--pool", "--stderr", job.id, check=True).stdout == b""
    refused = pool.nodes[1].cli("logs", "--pool", "--tail", "5", job.id)
    assert refused.returncode != 0 and b"--tail is not supported with --pool" in refused.stderr
    inspected = json.loads(pool.nodes[0].cli("inspect", "--pool", job.id, check=True).stdout)
    assert inspected["node"] == "n2" and inspected["local"]["id"] == current.local_id   # read from n2 by n0
    assert inspected["local"]["state"] == "RUNNING" and inspected["local"]["command"][0] == "/bin/sh"
    # Without --pool too: a job id this node does not know is looked up in the pool.
    assert pool.nodes[0].cli("logs", job.id[:12], check=True).stdout == b"started\n"
    assert json.loads(pool.nodes[1].cli("inspect", job.id, check=True).stdout)["local"]["id"] == current.local_id
    unknown = pool.nodes[0].cli("logs", "0123456789ab")
    assert unknown.returncode != 0 and b"0123456789ab" in unknown.stderr
    busy = pool.nodes[0].cli("rm", "--pool", job.id)
    assert busy.returncode != 0 and b"stop it first" in busy.stderr
    pool.nodes[0].cli("stop", "--pool", job.id, check=True)
    stopped = stub(pool, 1).GetPoolJob(cpb.GetPoolJobRequest(id=job.id), timeout=30)
    assert stopped.state == "STOPPED"
    # rm --pool forgets the pool's record; the local job stays on n2 until n2's own prune.
    assert pool.nodes[1].cli("rm", "--pool", job.id, check=True).stdout.decode().strip() == job.id[:12]
    assert pool.store().get(keys.job(job.id)) is None
    with pool.nodes[2].client() as n2:
        assert n2.get_job(current.local_id).state == "STOPPED"


def test_secret_env_reaches_a_job_on_another_node_and_is_never_in_etcd_in_clear(pool: Pool) -> None:
    result = pool.nodes[0].cli("run", "--pool", "--constraint", "disk=ssd", "--secret-env", "TOKEN=pool-s3cr3t",
                               "--", "/bin/sh", "-c", "echo token=$TOKEN", check=True)
    assert result.stdout == b"token=pool-s3cr3t\n"   # served by n0, run and opened on n2
    store = pool.store()
    for prefix in (keys.JOBS, keys.PENDING, keys.ASSIGN):
        assert all(b"pool-s3cr3t" not in kv.value for kv in store.range(prefix)[0])
    job = next(j for j in stub(pool, 0).ListPoolJobs(cpb.ListPoolJobsRequest(all=True), timeout=30).jobs
               if j.command == ["/bin/sh", "-c", "echo token=$TOKEN"])
    assert job.node == "n2"
    with pool.nodes[2].client() as n2:
        local = n2.get_job(job.local_id)
    assert "TOKEN" in local.secret_env_keys and "pool-s3cr3t" not in str(local)


def test_a_constraint_no_node_meets_leaves_the_job_pending(pool: Pool) -> None:
    job = submit(stub(pool, 0), "/bin/true", constraints={"disk": "tape"})
    time.sleep(1.5)
    assert stub(pool, 1).GetPoolJob(cpb.GetPoolJobRequest(id=job.id), timeout=30).state == "PENDING"
    assert stub(pool, 1).StopPoolJob(cpb.StopPoolJobRequest(id=job.id), timeout=30).state == "STOPPED"


def test_300_short_jobs_spread_over_the_nodes_each_run_exactly_once(pool: Pool) -> None:
    stubs = [stub(pool, i) for i in range(3)]
    ids = [stubs[i % 3].SubmitPoolJob(cpb.SubmitPoolJobRequest(job=pb.RunJobRequest(
               command=["/bin/true"], name=f"many-{i}")), timeout=30).id for i in range(300)]
    ended = wait_ended(stubs[0], ids, timeout=150)
    assert collections.Counter(j.state for j in ended.values()) == {"COMPLETED": 300}
    per_node = collections.Counter(j.node for j in ended.values())
    assert set(per_node) == {"n0", "n1", "n2"} and min(per_node.values()) >= 30, per_node
    # Exactly one local job per pool job, on the node the pool names.
    seen: collections.Counter[str] = collections.Counter()
    for i, daemon in enumerate(pool.nodes):
        with daemon.client() as client:
            for local in client.list_jobs(all=True):
                if local.name.startswith("many-"):
                    seen[local.name] += 1
                    assert any(j.local_id == local.id and j.node == f"n{i}" for j in ended.values())
    assert len(seen) == 300 and set(seen.values()) == {1}


def test_a_diamond_workflow_runs_its_jobs_on_different_nodes_and_completes(pool: Pool, tmp_path: Path) -> None:
    spec = tmp_path / "diamond.yaml"
    spec.write_text(textwrap.dedent("""\
        name: diamond
        jobs:
          a: {command: /bin/sh, args: [-c, "sleep 0.3"]}
          b: {command: /bin/sh, args: [-c, "sleep 0.3"], requires: [{a: COMPLETED}]}
          c: {command: /bin/sh, args: [-c, "sleep 0.3"], requires: [{a: COMPLETED}]}
          d: {command: /bin/true, requires: "b=COMPLETED AND c=COMPLETED"}
        """))
    result = pool.nodes[1].cli("workflow", "run", "--pool", "--wait", str(spec), timeout=90)
    assert result.returncode == 0, result.stderr.decode()
    wf = stub(pool, 0).GetPoolWorkflow(cpb.GetPoolWorkflowRequest(id=result.stdout.decode().strip()), timeout=30)
    assert wf.state == "COMPLETED" and [j.state for j in wf.jobs] == ["COMPLETED"] * 4
    assert len({j.node for j in wf.jobs}) >= 2   # spread: the branches land on different nodes
    status = pool.nodes[2].cli("workflow", "status", "--pool", wf.id, role="reader", check=True).stdout.decode()
    assert f"pool workflow {wf.id} (diamond): COMPLETED" in status
    assert all(f"{j.name}  " in status and j.node in status for j in wf.jobs)


def test_prune_pool_removes_only_records_of_jobs_that_ended_long_enough_ago(pool: Pool) -> None:
    job = submit(stub(pool, 0), "/bin/true")
    assert wait_ended(stub(pool, 0), [job.id], timeout=30)[job.id].state == "COMPLETED"
    kept = pool.nodes[0].cli("prune", "--pool", "-f", "--older-than", "1h", "--json", check=True)
    assert job.id not in json.loads(kept.stdout)["job_ids"]
    assert pool.store().get(keys.job(job.id)) is not None
    refused = pool.nodes[0].cli("prune", "--pool", "-f", role="developer")
    assert refused.returncode != 0   # pruning is for maintainers, as for local jobs
    dry = json.loads(pool.nodes[0].cli("prune", "--pool", "--dry-run", "--json", check=True).stdout)
    assert job.id in dry["job_ids"] and pool.store().get(keys.job(job.id)) is not None
    pruned = json.loads(pool.nodes[1].cli("prune", "--pool", "-f", "--json", role="maintainer", check=True).stdout)
    assert job.id in pruned["job_ids"] and pool.store().get(keys.job(job.id)) is None
    assert all(not j.ended for j in stub(pool, 0).ListPoolJobs(cpb.ListPoolJobsRequest(all=True), timeout=30).jobs)


def test_roles_apply_to_pool_calls_and_node_calls_need_a_node_certificate(pool: Pool) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        submit(stub(pool, 0, "reader"), "/bin/true")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as node_only:
        stub(pool, 0, "admin").NodeStopJob(cpb.NodeStopJobRequest(id="0" * 32), timeout=30)
    assert node_only.value.code() == grpc.StatusCode.PERMISSION_DENIED


def _node_channel(pool: Pool, caller: int, target: int) -> grpc.Channel:
    """A channel to node ``target`` with node ``caller``'s node certificate (role ``node``)."""
    from capsa.config import load_server_config

    config = load_server_config(pool.nodes[caller].home / "server.yaml")
    assert config.cluster is not None and config.cluster.node_tls is not None
    creds = grpc.ssl_channel_credentials(root_certificates=config.tls.ca_pem.encode(),
                                         private_key=config.cluster.node_tls.key_pem.encode(),
                                         certificate_chain=config.cluster.node_tls.cert_pem.encode())
    return grpc.secure_channel(pool.nodes[target].address, creds)


def test_a_node_certificate_reaches_only_pool_jobs_and_no_user_rpc(pool: Pool) -> None:
    with pool.nodes[1].client() as client:
        local = client.run_job(["/bin/sleep", "30"])
    with _node_channel(pool, 0, 1) as channel:
        as_node = cpb_grpc.ClusterServiceStub(channel)
        with pytest.raises(grpc.RpcError) as foreign:   # a user's local job, not a pool job
            as_node.NodeStopJob(cpb.NodeStopJobRequest(id=local.id, pool_job_id="0" * 32), timeout=30)
        assert foreign.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as user_rpc:
            as_node.ListPoolJobs(cpb.ListPoolJobsRequest(), timeout=30)
        assert user_rpc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pool.nodes[1].client() as client:
        assert client.get_job(local.id).state == "RUNNING"
        client.stop_job(local.id, grace_seconds=1)


def test_etcd_refuses_a_client_certificate_from_another_ca(pool: Pool) -> None:
    config_endpoints = pool.store().endpoints
    intruder = EtcdClient(config_endpoints, tls=foreign_etcd_cert())
    with pytest.raises(Unavailable):
        intruder.get(keys.META_VERSION)


def _leader(pool: Pool) -> str:
    kv = pool.store().leader(ELECTION)
    return kv.value.decode() if kv else ""


def test_a_killed_scheduler_leader_is_replaced_by_the_stand_by_within_the_lease(pool: Pool) -> None:
    deadline = time.monotonic() + 10
    while not (leader := _leader(pool)):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc = pool.schedulers[0 if leader == "s1" else 1]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = time.monotonic()
    while _leader(pool) in ("", leader):
        assert time.monotonic() - killed < 10, "no stand-by took over"
        time.sleep(0.05)
    failover = time.monotonic() - killed
    assert failover < 2 + 3   # the lease TTL (2 s) plus campaign and scheduling slack
    job = submit(stub(pool, 0), "/bin/true")
    assert wait_ended(stub(pool, 0), [job.id], timeout=30)[job.id].state == "COMPLETED"


def test_losing_one_of_three_etcd_members_changes_nothing(pool: Pool) -> None:
    victim = pool.etcd[0]
    victim.stop()
    try:
        jobs = [submit(stub(pool, i % 3), "/bin/true").id for i in range(9)]
        assert {j.state for j in wait_ended(stub(pool, 1), jobs, timeout=60).values()} == {"COMPLETED"}
        nodes = stub(pool, 2).ListNodes(cpb.ListNodesRequest(), timeout=30).nodes
        assert [n.state for n in nodes] == ["READY"] * 3
    finally:
        victim.start()
