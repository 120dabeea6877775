"""A node's handling of its assignments against a real (single-member, loopback, plain HTTP) etcd, with the
local job service faked: what the pool record says about the local job that ran it."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from capsa.cluster.etcd import Compare, EtcdClient, Op
from capsa.cluster.model import Assignment, PoolJob, PoolJobState, keys
from capsa.cluster.node import Inventory, PoolNode
from capsa.jobs.model import JobState


class FakeJobs:
    """The local job service: every job it starts has already ended by the time anyone asks."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.fenced: list[str] = []
        self.supervisor = SimpleNamespace(stop=lambda job_id, grace: None,
                                          request=lambda req, expect, timeout=None: self.fenced.extend(req.job_ids))

    def run(self, request: Any) -> Any:
        local_id = f"local{len(self.started) + 1}"
        self.started.append(local_id)
        return SimpleNamespace(id=local_id, started_ns=time.time_ns())

    def list(self, *, all: bool = False) -> list[Any]:
        return []

    def get(self, local_id: str) -> Any:
        return SimpleNamespace(id=local_id, state=JobState.COMPLETED, reason="", exit_code=0, started_ns=1)


class RunningWriteAfterTheEnd(EtcdClient):
    """Holds the node's "RUNNING" write of a job back until the job's end is recorded: the order a job that
    ends within milliseconds gets when the mirror pass lands between its start and that write."""

    def txn(self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> bool:
        if any(op.kind == "put" and op.key.startswith(keys.JOBS) and b'"state": "RUNNING"' in op.value
               for op in success):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                kv = self.get(success[0].key)
                if kv is not None and PoolJob.load(kv.value).status.ended:
                    break
                time.sleep(0.02)
        return super().txn(compare, success, failure)


def _wait(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _node(etcd: EtcdClient, jobs: FakeJobs) -> PoolNode:
    return PoolNode(etcd, jobs, name="n1", address="127.0.0.1:1", labels={}, snapshotter="overlay",  # type: ignore[arg-type]
                    lease_ttl_s=5, max_jobs=0, inventory=lambda: Inventory(1, 1024, 0, [], []))


def _assign(etcd: EtcdClient, node: PoolNode, job_id: str) -> None:
    job = PoolJob(id=job_id, spec={"command": ["/bin/true"]}, state=PoolJobState.ASSIGNED.value, node=node.name,
                  node_lease=node.lease)
    assert etcd.txn([], [Op.put(keys.job(job_id), job.dump()),
                         Op.put(keys.assign(node.name, job_id), Assignment(job_id, 1, 0, 0, 0).dump(),
                                lease=node.lease)])


def _record(etcd: EtcdClient, job_id: str) -> PoolJob | None:
    kv = etcd.get(keys.job(job_id))
    return PoolJob.load(kv.value) if kv else None


def test_a_job_that_ends_before_its_running_write_still_names_its_local_job(etcd_url: str) -> None:
    etcd, jobs = RunningWriteAfterTheEnd([etcd_url]), FakeJobs()
    node = _node(etcd, jobs)
    node.start()
    try:
        job_id = "a" * 32
        _assign(etcd, node, job_id)
        assert _wait(lambda: (r := _record(etcd, job_id)) is not None and r.status.ended, 10)
        time.sleep(0.3)   # the held-back RUNNING write has had its turn
        record = _record(etcd, job_id)
        assert record is not None
        assert (record.state, record.local_id, record.node) == ("COMPLETED", "local1", "n1")
        assert jobs.started == ["local1"] and jobs.fenced[:1] == ["local1"]   # armed as soon as it started
        assert etcd.get(keys.assign("n1", job_id)) is None
    finally:
        node.stop()


def test_assignments_re_read_after_a_broken_watch_start_nothing_twice(etcd_url: str) -> None:
    etcd, jobs = EtcdClient([etcd_url]), FakeJobs()
    node = _node(etcd, jobs)
    node.start()
    try:
        ids = [f"{i:032x}" for i in range(1, 21)]
        for job_id in ids:
            _assign(etcd, node, job_id)
        # The watch is restarted (as after an etcd error) while the jobs start and end: it re-reads every
        # assignment still present; none may start again.
        for _ in range(5):
            node._restart_watch()
            time.sleep(0.05)
        assert _wait(lambda: all((r := _record(etcd, i)) is not None and r.status.ended for i in ids), 15)
        time.sleep(0.5)
        records = [_record(etcd, i) for i in ids]
        assert sorted(jobs.started) == sorted(r.local_id for r in records if r is not None)
        assert len(jobs.started) == len(ids)
    finally:
        node.stop()



def test_an_assignment_under_a_previous_lease_is_not_started_again(etcd_url: str) -> None:
    """A daemon restarted within the TTL finds its previous life's assignments (their lease still alive): those
    attempts are being given up with that lease, and starting them again would run them twice."""
    etcd, jobs = EtcdClient([etcd_url]), FakeJobs()
    old_lease = etcd.grant(30)
    job = PoolJob(id="e" * 32, spec={"command": ["/bin/true"]}, state=PoolJobState.RUNNING.value, node="n1",
                  node_lease=old_lease, local_id="old")
    etcd.txn([], [Op.put(keys.job(job.id), job.dump()),
                  Op.put(keys.assign("n1", job.id), Assignment(job.id, 1, 0, 0, 0).dump(), lease=old_lease)])
    node = _node(etcd, jobs)
    node.start()
    try:
        time.sleep(1.0)
        assert jobs.started == []
    finally:
        node.stop()
        etcd.revoke(old_lease)


def test_local_pool_jobs_a_previous_daemon_left_running_are_killed_before_it_joins(etcd_url: str) -> None:
    etcd, jobs = EtcdClient([etcd_url]), FakeJobs()
    stopped: list[tuple[str, bool]] = []
    jobs.list = lambda all=False: [SimpleNamespace(id="left1", labels={"capsa.pool/job": "f" * 32}),  # type: ignore[method-assign]
                                   SimpleNamespace(id="users1", labels={"team": "a"})]
    jobs.supervisor.stop = lambda job_id, grace: stopped.append((job_id, etcd.get(keys.node("n1")) is None))
    node = _node(etcd, jobs)
    node.start()
    try:
        assert stopped == [("left1", True)]   # only the pool job, and before the node registered
    finally:
        node.stop()


class SlowAssignmentDelete(EtcdClient):
    """Holds a plain delete of an assignment back until the job was bound again: the order in which a node's
    separate clean-up after an attempt's end removed the next attempt's assignment."""

    def delete(self, key: str, *, prefix: bool = False) -> int:
        if key.startswith(keys.ASSIGN):
            job_id = key.rsplit("/", 1)[-1]
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                kv = self.get(keys.job(job_id))
                if kv is not None and PoolJob.load(kv.value).state == PoolJobState.ASSIGNED.value:
                    break
                time.sleep(0.01)
        return super().delete(key, prefix=prefix)


def test_every_attempt_of_a_job_rebound_to_the_same_node_starts(etcd_url: str) -> None:
    from capsa.cluster.scheduler import Scheduler
    from capsa.cluster.workflows import submit_ops

    etcd, jobs = SlowAssignmentDelete([etcd_url]), FakeJobs()
    node = _node(etcd, jobs)
    node.start()
    sched = Scheduler(EtcdClient([etcd_url]), name="s", lease_ttl_s=3, retention_s=0)
    runner = threading.Thread(target=sched.run, daemon=True)
    runner.start()
    try:
        job = PoolJob(id="c" * 32, spec={"command": ["/bin/true"]}, restart="always", max_restarts=3)
        etcd.txn([], submit_ops(job))
        assert _wait(lambda: (r := _record(etcd, job.id)) is not None and r.status.ended, 20), _record(etcd, job.id)
        record = _record(etcd, job.id)
        assert record is not None and (record.attempt, record.state) == (4, "COMPLETED")
        assert len(jobs.started) == 4 and record.local_id == jobs.started[-1]
        assert etcd.range(keys.assign("n1"))[0] == []
    finally:
        sched.stop_event.set()
        runner.join(10)
        node.stop()
