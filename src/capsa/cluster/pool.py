"""The pool as users see it through any node: submit, list, inspect, stop, logs, nodes, workflows.

Reads come from etcd (every job record says where it runs and how it is doing); acting on a running
job goes to the node that owns it: directly when that is this node, otherwise over mutual TLS with
this node's ``node`` certificate (:mod:`capsa.cluster.proxy`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from capsa.cluster.etcd import Compare, EtcdClient, Op
from capsa.cluster.model import (
    NodeRecord,
    PoolJob,
    PoolJobState,
    PoolWorkflow,
    Restart,
    keys,
)
from capsa.cluster.node import PoolNode
from capsa.cluster.proxy import NodeDialer
from capsa.cluster.retention import Pruned, prune_records, remove_job_record
from capsa.cluster.sealing import seal
from capsa.cluster.workflows import new_job_id, new_workflow, submit_ops
from capsa.errors import CapsaError, Conflict, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

__all__ = ["Pool", "PoolNodeView"]


@dataclasses.dataclass(frozen=True)
class PoolNodeView:
    record: NodeRecord
    state: str
    jobs: int


class Pool:
    def __init__(self, etcd: EtcdClient, node: PoolNode, dialer: NodeDialer, *, ca_pem: str = "") -> None:
        self.etcd = etcd
        self.node = node
        self.dialer = dialer
        self.ca_pem = ca_pem

    # -- nodes ------------------------------------------------------------------------------------
    def nodes(self) -> list[PoolNodeView]:
        """Members with a live record (lease) READY; members whose lease expired LOST, with their last record."""
        live = {n.name: n for n in (NodeRecord.load(kv.value) for kv in self.etcd.range(keys.NODES)[0])}
        members = {n.name: n for n in (NodeRecord.load(kv.value) for kv in self.etcd.range(keys.MEMBERS)[0])}
        counts: dict[str, int] = {}
        for kv in self.etcd.range(keys.ASSIGN, keys_only=True)[0]:
            name = kv.key[len(keys.ASSIGN):].split("/", 1)[0]
            counts[name] = counts.get(name, 0) + 1
        return [PoolNodeView(live[name], "READY", counts.get(name, 0)) if name in live else
                PoolNodeView(members[name], "LOST", 0) for name in sorted({*live, *members})]

    # -- jobs ---------------------------------------------------------------------------------------
    def submit(self, spec: dict[str, Any], *, constraints: dict[str, str], restart: str,
               max_restarts: int, not_before_ns: int = 0, secret_env: dict[str, str] | None = None) -> PoolJob:
        try:
            policy = Restart(restart or "no")
        except ValueError:
            raise InvalidArgument(f"restart {restart!r}: use no, on-failure or always") from None
        job = PoolJob(id=new_job_id(), spec=spec, constraints=constraints, restart=policy.value,
                      max_restarts=max_restarts or 3, not_before_ns=not_before_ns)
        if secret_env:
            job.sealed = self._seal(job.id, secret_env)
        self.etcd.txn([Compare.missing(keys.job(job.id))], submit_ops(job))
        return job

    def _seal(self, job_id: str, values: dict[str, str]) -> dict[str, str]:
        """One box per READY node whose published certificate checks out (capsa.cluster.sealing)."""
        sealed: dict[str, str] = {}
        refused: list[str] = []
        for kv in self.etcd.range(keys.NODES)[0]:
            record = NodeRecord.load(kv.value)
            try:
                sealed[record.name] = seal(values, job_id=job_id, node=record.name, cert_pem=record.cert_pem,
                                           ca_pem=self.ca_pem)
            except CapsaError as exc:
                refused.append(f"{record.name}: {exc.message}")
        if not sealed:
            raise FailedPrecondition("--secret-env: no node of the pool publishes a node certificate to seal the"
                                     " values to" + (f" ({'; '.join(refused)})" if refused else ""))
        return sealed

    def _jobs(self) -> list[PoolJob]:
        return [PoolJob.load(kv.value) for kv in self.etcd.range(keys.JOBS)[0]]

    def list(self, *, all: bool = False) -> list[PoolJob]:
        jobs = [j for j in self._jobs() if all or not j.status.ended]
        return sorted(jobs, key=lambda j: j.submitted_ns)

    def get(self, id_or_prefix: str) -> PoolJob:
        if not id_or_prefix or not all(c in "0123456789abcdef" for c in id_or_prefix):
            raise InvalidArgument(f"pool job id {id_or_prefix!r}: expected hex digits")
        if len(id_or_prefix) == 32:
            kv = self.etcd.get(keys.job(id_or_prefix))
            if kv is None:
                raise NotFound(f"no pool job {id_or_prefix}")
            return PoolJob.load(kv.value)
        found, _ = self.etcd.range(keys.job(id_or_prefix))
        if not found:
            raise NotFound(f"no pool job {id_or_prefix}")
        if len(found) > 1:
            raise Conflict(f"pool job prefix {id_or_prefix} names {len(found)} jobs; give more digits")
        return PoolJob.load(found[0].value)

    def stop(self, id_or_prefix: str, grace_s: float) -> PoolJob:
        """Stop a job wherever it runs; a job not placed yet just ends STOPPED."""
        for _ in range(20):
            job = self.get(id_or_prefix)
            if job.status.ended:
                return job
            if job.status == PoolJobState.PENDING:
                kv = self.etcd.get(keys.job(job.id))
                assert kv is not None
                stopped = dataclasses.replace(job, state=PoolJobState.STOPPED.value, stop_requested=True,
                                              reason="stopped by user before placement", ended_ns=time.time_ns())
                if self.etcd.txn([Compare.unchanged(kv)], [Op.put(kv.key, stopped.dump()),
                                                           Op.delete(keys.pending(job.id))]):
                    return stopped
                continue
            if not job.local_id:   # assigned, not started yet: wait for the node to start it
                time.sleep(0.1)
                continue
            if job.node == self.node.name:
                self.node.stop_local(job.local_id, grace_s)
            else:
                self.dialer.stop(self.address_of(job.node), job.id, job.local_id, grace_s)
            return self._wait_ended(job.id, timeout=grace_s + 15)
        raise Conflict(f"pool job {id_or_prefix} kept changing while being stopped; try again")

    def _wait_ended(self, job_id: str, timeout: float) -> PoolJob:
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.status.ended or time.monotonic() > deadline:
                return job
            time.sleep(0.1)

    def local_job(self, job: PoolJob) -> Any:
        """The local job a pool job runs (or ran) as, from its node: here, or asked over mTLS. None if not
        started or its node is gone (LOST, or left the pool)."""
        if not job.local_id or not job.node:
            return None
        if job.node == self.node.name:
            return self.node.jobs.get(job.local_id)
        try:
            address = self.address_of(job.node)
        except NotFound:
            return None
        return self.dialer.get(address, job.id, job.local_id)

    def remove(self, id_or_prefix: str, *, force: bool) -> str:
        """Remove an ended job's record (``force``: stop it first); the local job stays on its node."""
        for _ in range(20):
            job = self.get(id_or_prefix)
            if not job.status.ended:
                if not force:
                    raise FailedPrecondition(f"pool job {job.id[:12]} is {job.state}: stop it first (or use -f)")
                job = self.stop(job.id, 0)
                if not job.status.ended:
                    raise Conflict(f"pool job {job.id[:12]} did not end after being stopped; try again")
            if job.workflow_id:
                wf = self.etcd.get(keys.workflow(job.workflow_id))
                if wf is not None and PoolWorkflow.load(wf.value).state == "RUNNING":
                    raise FailedPrecondition(f"pool job {job.id[:12]} belongs to workflow {job.workflow_id[:12]},"
                                             " which is still running (it reads the job's outcome)")
            kv = self.etcd.get(keys.job(job.id))
            if kv is None:
                return job.id
            if remove_job_record(self.etcd, kv):
                return job.id
        raise Conflict(f"pool job {id_or_prefix} kept changing while being removed; try again")

    def prune(self, *, older_than_s: float, dry_run: bool) -> Pruned:
        return prune_records(self.etcd, cutoff_ns=time.time_ns() - int(older_than_s * 1e9), dry_run=dry_run)

    def check_owned(self, pool_job_id: str, local_id: str) -> None:
        """PermissionDenied unless ``local_id`` runs (or ran) pool job ``pool_job_id`` on this node: a node
        certificate reaches pool jobs only, never a user's local jobs."""
        kv = self.etcd.get(keys.job(pool_job_id)) if pool_job_id else None
        job = PoolJob.load(kv.value) if kv else None
        if job is None or job.node != self.node.name or not local_id or job.local_id != local_id:
            raise PermissionDenied(f"job {local_id[:12] or '-'} is not pool job {pool_job_id[:12] or '-'} on"
                                   f" node {self.node.name}")

    def address_of(self, node: str) -> str:
        kv = self.etcd.get(keys.node(node))
        if kv is None:
            raise NotFound(f"node {node} is not in the pool (lost?)")
        return NodeRecord.load(kv.value).address

    # -- workflows ------------------------------------------------------------------------------------
    def submit_workflow(self, text: str, *, base_dir: str, constraints: dict[str, str]) -> PoolWorkflow:
        wf = dataclasses.replace(new_workflow(text, base_dir), constraints=constraints)
        self.etcd.put(keys.workflow(wf.id), wf.dump())
        return wf

    def workflow(self, wf_id: str) -> tuple[PoolWorkflow, dict[str, PoolJob]]:
        kv = self.etcd.get(keys.workflow(wf_id))
        if kv is None:
            found, _ = self.etcd.range(keys.workflow(wf_id)) if wf_id else ([], 0)
            if len(found) != 1:
                raise NotFound(f"no pool workflow {wf_id}")
            kv = found[0]
        wf = PoolWorkflow.load(kv.value)
        jobs = {}
        for name, job_id in wf.jobs.items():
            job_kv = self.etcd.get(keys.job(job_id))
            if job_kv is not None:
                jobs[name] = PoolJob.load(job_kv.value)
        return wf, jobs
