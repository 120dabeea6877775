"""Pool record cleanup against a real etcd: what `prune --pool`, `rm --pool` and the scheduler's retention
remove, and what they must keep (active jobs, recent ones, jobs of a workflow still running)."""

from __future__ import annotations

import dataclasses
import time
from types import SimpleNamespace

import pytest

from capsa.cluster.etcd import EtcdClient, Op
from capsa.cluster.model import PoolJob, PoolJobState, PoolWorkflow, keys
from capsa.cluster.pool import Pool
from capsa.cluster.retention import prune_records
from capsa.cluster.scheduler import Scheduler
from capsa.errors import FailedPrecondition

DAY_NS = 86400 * 10**9


def _job(etcd: EtcdClient, n: int, state: PoolJobState, *, ended_days_ago: float = 0, workflow: str = "") -> str:
    job_id = f"{n:x}" * 32
    ended = time.time_ns() - int(ended_days_ago * DAY_NS) if state.ended else 0
    job = PoolJob(id=job_id, spec={"command": ["/bin/true"]}, state=state.value, ended_ns=ended, workflow_id=workflow,
                  node="n1" if state != PoolJobState.PENDING else "")
    etcd.put(keys.job(job_id), job.dump())
    return job_id


def _workflow(etcd: EtcdClient, wf_id: str, state: str, *, ended_days_ago: float = 0) -> None:
    ended = time.time_ns() - int(ended_days_ago * DAY_NS) if state != "RUNNING" else 0
    etcd.put(keys.workflow(wf_id), PoolWorkflow(id=wf_id, name="w", yaml="", state=state, ended_ns=ended).dump())


def _left(etcd: EtcdClient) -> set[str]:
    return {kv.key.rsplit("/", 1)[-1] for prefix in (keys.JOBS, keys.WORKFLOWS) for kv in etcd.range(prefix)[0]}


def test_prune_removes_what_ended_before_the_cutoff_and_keeps_the_rest(etcd_url: str) -> None:
    etcd = EtcdClient([etcd_url])
    old_done = _job(etcd, 1, PoolJobState.COMPLETED, ended_days_ago=10)
    old_lost = _job(etcd, 2, PoolJobState.LOST, ended_days_ago=8)
    recent = _job(etcd, 3, PoolJobState.FAILED, ended_days_ago=1)
    running = _job(etcd, 4, PoolJobState.RUNNING)
    pending = _job(etcd, 5, PoolJobState.PENDING)
    _workflow(etcd, "a" * 32, "RUNNING")
    of_running_wf = _job(etcd, 6, PoolJobState.COMPLETED, ended_days_ago=10, workflow="a" * 32)
    _workflow(etcd, "b" * 32, "COMPLETED", ended_days_ago=9)
    of_ended_wf = _job(etcd, 7, PoolJobState.COMPLETED, ended_days_ago=9, workflow="b" * 32)
    cutoff = time.time_ns() - 7 * DAY_NS

    preview = prune_records(etcd, cutoff_ns=cutoff, dry_run=True)
    assert sorted(preview.job_ids) == sorted([old_done, old_lost, of_ended_wf]) and preview.workflow_ids == ["b" * 32]
    assert len(_left(etcd)) == 9   # a dry run removes nothing

    pruned = prune_records(etcd, cutoff_ns=cutoff)
    assert sorted(pruned.job_ids) == sorted(preview.job_ids) and pruned.workflow_ids == ["b" * 32]
    assert _left(etcd) == {recent, running, pending, of_running_wf, "a" * 32}


def test_the_scheduler_leader_sweeps_by_its_retention(etcd_url: str) -> None:
    etcd = EtcdClient([etcd_url])
    old, recent = _job(etcd, 1, PoolJobState.STOPPED, ended_days_ago=3), _job(etcd, 2, PoolJobState.COMPLETED)
    keep_all = Scheduler(etcd, name="s0", retention_s=0)
    assert keep_all.one_pass().pruned == 0 and _left(etcd) == {old, recent}
    sched = Scheduler(etcd, name="s1", retention_s=2 * 86400)
    assert sched.one_pass().pruned == 1 and _left(etcd) == {recent}
    assert sched.one_pass().pruned == 0   # once a minute, not every pass


def test_rm_removes_an_ended_record_and_refuses_an_active_one_or_one_a_running_workflow_reads(etcd_url: str) -> None:
    etcd = EtcdClient([etcd_url])
    node = SimpleNamespace(name="n0", jobs=None)
    pool = Pool(etcd, node, dialer=None)  # type: ignore[arg-type]
    done = _job(etcd, 1, PoolJobState.COMPLETED)
    running = _job(etcd, 2, PoolJobState.RUNNING)
    _workflow(etcd, "c" * 32, "RUNNING")
    in_wf = _job(etcd, 3, PoolJobState.FAILED, workflow="c" * 32)
    assert pool.remove(done[:12], force=False) == done and etcd.get(keys.job(done)) is None
    with pytest.raises(FailedPrecondition, match="stop it first"):
        pool.remove(running, force=False)
    with pytest.raises(FailedPrecondition, match="still running"):
        pool.remove(in_wf, force=False)
    assert _left(etcd) == {running, in_wf, "c" * 32}


def test_a_record_that_changed_since_it_was_read_is_not_removed(etcd_url: str) -> None:
    etcd = EtcdClient([etcd_url])
    job_id = _job(etcd, 1, PoolJobState.FAILED, ended_days_ago=10)
    kv = etcd.get(keys.job(job_id))
    assert kv is not None
    # Placed again by its restart policy between the read and the delete:
    again = dataclasses.replace(PoolJob.load(kv.value), state=PoolJobState.PENDING.value, attempt=2, ended_ns=0)
    etcd.txn([], [Op.put(kv.key, again.dump())])
    from capsa.cluster.retention import remove_job_record

    assert not remove_job_record(etcd, kv)
    assert etcd.get(keys.job(job_id)) is not None
