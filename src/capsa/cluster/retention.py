"""Removing the pool's records of what ended, so etcd does not grow forever.

An ended job's record (``jobs/<id>``) and an ended workflow's record (``workflows/<id>``) are all that
is left of them in etcd once they ended (pending and assignment keys go when a job is bound or ends).
They are removed by ``capsa rm --pool`` (one job), ``capsa prune --pool`` (everything that ended some
time ago) and the scheduler leader's retention sweep (``capsa scheduler --retention``, 7 days by
default). A job of a workflow that is still running is kept: the workflow reads its outcome. The
local jobs stay on their nodes until each node's own ``capsa prune``.

Every delete is a transaction guarded by the record being unchanged since it was read, so a record
that changed meanwhile (a job placed again by its restart policy) is never removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from capsa.cluster.etcd import Compare, EtcdClient, KeyValue, Op
from capsa.cluster.model import PoolJob, PoolWorkflow, keys

__all__ = ["Pruned", "prune_records", "remove_job_record"]


@dataclass
class Pruned:
    job_ids: list[str] = field(default_factory=list)
    workflow_ids: list[str] = field(default_factory=list)


def _running_workflows(etcd: EtcdClient) -> tuple[set[str], list[tuple[KeyValue, PoolWorkflow]]]:
    workflows = [(kv, PoolWorkflow.load(kv.value)) for kv in etcd.range(keys.WORKFLOWS)[0]]
    return {wf.id for _, wf in workflows if wf.state == "RUNNING"}, workflows


def remove_job_record(etcd: EtcdClient, kv: KeyValue, guard: list[Compare] | None = None) -> bool:
    """Delete one ended job's record if it is unchanged since ``kv`` was read; False if it changed."""
    return etcd.txn([Compare.unchanged(kv), *(guard or [])], [Op.delete(kv.key)])


def prune_records(etcd: EtcdClient, *, cutoff_ns: int, dry_run: bool = False,
                  guard: list[Compare] | None = None) -> Pruned:
    """Remove the records of jobs and workflows that ended at or before ``cutoff_ns`` (wall clock)."""
    out = Pruned()
    running, workflows = _running_workflows(etcd)
    for kv in etcd.range(keys.JOBS)[0]:
        job = PoolJob.load(kv.value)
        if not job.status.ended or (job.ended_ns or job.submitted_ns) > cutoff_ns:
            continue
        if job.workflow_id in running:
            continue
        if dry_run or remove_job_record(etcd, kv, guard):
            out.job_ids.append(job.id)
    for kv, wf in workflows:
        if wf.state == "RUNNING" or (wf.ended_ns or wf.submitted_ns) > cutoff_ns:
            continue
        if dry_run or etcd.txn([Compare.unchanged(kv), *(guard or [])], [Op.delete(kv.key)]):
            out.workflow_ids.append(wf.id)
    return out
