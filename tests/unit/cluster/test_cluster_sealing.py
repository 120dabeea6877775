"""--secret-env for pool jobs: sealed to each node's certificate, opened only by that node for that job, never
stored in clear (the pool's records in a real etcd are checked for the value)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from capsa.cluster.etcd import EtcdClient
from capsa.cluster.model import NodeRecord, PoolJob, keys
from capsa.cluster.placement import Demand, NodeLoad, explain
from capsa.cluster.pool import Pool
from capsa.cluster.sealing import open_sealed, seal
from capsa.errors import FailedPrecondition, Unauthorized
from capsa.pki import Role, create_ca, issue_client_cert, issue_node_cert

SECRET = {"TOKEN": "s3cr3t-value", "OTHER": "x"}
CA = create_ca("pool CA")
N1 = issue_node_cert(CA, node="n1")
N2 = issue_node_cert(CA, node="n2")


def test_a_box_opens_with_its_nodes_key_for_its_job_only() -> None:
    box = seal(SECRET, job_id="a" * 32, node="n1", cert_pem=N1.cert_pem, ca_pem=CA.cert_pem)
    assert "s3cr3t" not in box
    assert open_sealed(box, job_id="a" * 32, node="n1", key_pem=N1.key_pem) == SECRET
    with pytest.raises(FailedPrecondition, match="does not open") as wrong_key:
        open_sealed(box, job_id="a" * 32, node="n1", key_pem=N2.key_pem)
    assert "s3cr3t" not in wrong_key.value.message
    with pytest.raises(FailedPrecondition):   # moved to another job: the associated data differs
        open_sealed(box, job_id="b" * 32, node="n1", key_pem=N1.key_pem)
    with pytest.raises(FailedPrecondition):   # or claimed for another node
        open_sealed(box, job_id="a" * 32, node="n2", key_pem=N1.key_pem)
    tampered = box[:-8] + ("A" if box[-8] != "A" else "B") + box[-7:]
    with pytest.raises(FailedPrecondition):
        open_sealed(tampered, job_id="a" * 32, node="n1", key_pem=N1.key_pem)


@pytest.mark.parametrize("why", ["another CA", "another node's", "a user's"])
def test_only_the_named_nodes_node_certificate_from_the_pools_ca_is_sealed_to(why: str) -> None:
    cert = {"another CA": issue_node_cert(create_ca("other"), node="n1").cert_pem,
            "another node's": N2.cert_pem,
            "a user's": issue_client_cert(CA, name="node:n1", role=Role.ADMIN).cert_pem}[why]
    with pytest.raises(Unauthorized):
        seal(SECRET, job_id="a" * 32, node="n1", cert_pem=cert, ca_pem=CA.cert_pem)


def test_placement_keeps_a_sealed_job_to_the_nodes_it_is_sealed_to() -> None:
    load = NodeLoad(NodeRecord(name="n3", address="", lease=1, cpus=2, memory_mb=1024))
    assert explain(load, Demand(nodes=("n1", "n2"))) == "its secret environment is sealed to other nodes"
    assert explain(load, Demand(nodes=("n3",))) is None and explain(load, Demand()) is None


def _register(etcd: EtcdClient, name: str, cert_pem: str) -> None:
    lease = etcd.grant(30)
    etcd.put(keys.node(name), NodeRecord(name=name, address="", lease=lease, cpus=1, memory_mb=1024,
                                         cert_pem=cert_pem).dump(), lease=lease)


def test_submit_seals_to_every_node_with_a_valid_certificate_and_stores_no_value(etcd_url: str) -> None:
    etcd = EtcdClient([etcd_url])
    _register(etcd, "n1", N1.cert_pem)
    _register(etcd, "n2", N2.cert_pem)
    _register(etcd, "n3", N1.cert_pem)   # publishes another node's certificate: not sealed to
    pool = Pool(etcd, SimpleNamespace(name="n1"), dialer=None, ca_pem=CA.cert_pem)  # type: ignore[arg-type]
    job = pool.submit({"command": ["/bin/env"], "env": {}}, constraints={}, restart="no", max_restarts=0,
                      secret_env=SECRET)
    assert sorted(job.sealed) == ["n1", "n2"]
    for prefix in (keys.JOBS, keys.PENDING):
        for kv in etcd.range(prefix)[0]:
            assert b"s3cr3t" not in kv.value
    pending = etcd.get(keys.pending(job.id))
    assert pending is not None and pending.json()["sealed_for"] == ["n1", "n2"]
    stored = PoolJob.load(etcd.get(keys.job(job.id)).value)  # type: ignore[union-attr]
    assert open_sealed(stored.sealed["n2"], job_id=job.id, node="n2", key_pem=N2.key_pem) == SECRET


def test_submit_refuses_secrets_when_no_node_can_open_them(etcd_url: str) -> None:
    etcd = EtcdClient([etcd_url])
    _register(etcd, "n1", "")
    pool = Pool(etcd, SimpleNamespace(name="n1"), dialer=None, ca_pem=CA.cert_pem)  # type: ignore[arg-type]
    with pytest.raises(FailedPrecondition, match="no node of the pool publishes a node certificate"):
        pool.submit({"command": ["/bin/env"], "env": {}}, constraints={}, restart="no", max_restarts=0,
                    secret_env=SECRET)
    assert etcd.range(keys.JOBS)[0] == []


def test_the_node_opens_its_box_and_hands_the_values_to_the_start(etcd_url: str) -> None:
    from capsa.cluster.etcd import Op
    from capsa.cluster.model import Assignment, PoolJobState
    from capsa.cluster.node import Inventory, PoolNode

    etcd = EtcdClient([etcd_url])
    runs: list[Any] = []

    class Jobs:
        supervisor = SimpleNamespace(stop=lambda *a: None, request=lambda *a, **k: None)

        def run(self, request: Any) -> Any:
            runs.append(request)
            return SimpleNamespace(id="local1", started_ns=time.time_ns())

        def list(self, *, all: bool = False) -> list[Any]:
            return []

    node = PoolNode(etcd, Jobs(), name="n1", address="", labels={}, snapshotter="overlay",  # type: ignore[arg-type]
                    lease_ttl_s=5, max_jobs=0, inventory=lambda: Inventory(1, 1024, 0, [], []),
                    cert_pem=N1.cert_pem, key_pem=N1.key_pem)
    node.start()
    try:
        record = NodeRecord.load(etcd.get(keys.node("n1")).value)  # type: ignore[union-attr]
        assert record.cert_pem == N1.cert_pem   # published for sealing
        job = PoolJob(id="9" * 32, spec={"command": ["/bin/env"]}, state=PoolJobState.ASSIGNED.value, node="n1",
                      node_lease=node.lease)
        job.sealed = {"n1": seal(SECRET, job_id=job.id, node="n1", cert_pem=N1.cert_pem, ca_pem=CA.cert_pem)}
        etcd.txn([], [Op.put(keys.job(job.id), job.dump()),
                      Op.put(keys.assign("n1", job.id), Assignment(job.id, 1, 0, 0, 0).dump(), lease=node.lease)])
        deadline = time.monotonic() + 10
        while not runs:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert runs[0].secret_env == SECRET and runs[0].labels == {"capsa.pool/job": job.id}
    finally:
        node.stop()
