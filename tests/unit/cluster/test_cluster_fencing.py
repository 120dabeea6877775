"""Fencing: a node that cannot renew its lease kills its pool jobs before the lease can expire in etcd,
and rejoins under a fresh lease once etcd answers again."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from capsa.cluster.node import Inventory, PoolNode
from capsa.errors import Unavailable
from capsa.runtime.protocol import FenceRequest, OkReply


class FakeEtcd:
    """Answers like etcd while ``up``; ``keepalive`` records when each successful renewal was sent."""

    def __init__(self) -> None:
        self.up = True
        self.expired = False
        self.leases = 0
        self.renewed_at: list[float] = []

    def _check(self) -> None:
        if not self.up:
            raise Unavailable("no etcd endpoint answered")

    def txn(self, *a: Any, **k: Any) -> bool:
        self._check()
        return True

    def grant(self, ttl: int) -> int:
        self._check()
        self.leases += 1
        self.expired = False
        return self.leases

    def put(self, *a: Any, **k: Any) -> int:
        self._check()
        return 1

    def keepalive(self, lease: int, *, timeout: float | None = None) -> int:
        sent = time.monotonic()
        self._check()
        if self.expired:
            return 0
        self.renewed_at.append(sent)
        return 2

    def range(self, *a: Any, **k: Any) -> tuple[list[Any], int]:
        self._check()
        return [], 1

    def watch(self, prefix: str, *, start_revision: int, stop: threading.Event) -> Iterator[list[Any]]:
        stop.wait()
        return iter(())

    def get(self, key: str) -> None:
        return None

    def delete(self, *a: Any, **k: Any) -> int:
        return 0

    def revoke(self, lease: int) -> None:
        pass


class FakeSupervisor:
    def __init__(self) -> None:
        self.killed: list[tuple[str, float, float]] = []
        self.fences: list[FenceRequest] = []

    def stop(self, job_id: str, grace: float) -> None:
        self.killed.append((job_id, grace, time.monotonic()))

    def request(self, request: Any, expect: type, *, timeout: float | None = None) -> Any:
        assert isinstance(request, FenceRequest) and expect is OkReply
        self.fences.append(request)
        return OkReply()


class FakeJobs:
    def __init__(self) -> None:
        self.supervisor = FakeSupervisor()

    def list(self, *, all: bool = False) -> list[Any]:
        return [SimpleNamespace(id="local-1", labels={})]   # still running, as far as the mirror asks


def _node(etcd: FakeEtcd, jobs: FakeJobs, ttl: int = 2) -> PoolNode:
    return PoolNode(etcd, jobs, name="n1", address="127.0.0.1:1", labels={}, snapshotter="overlay",  # type: ignore[arg-type]
                    lease_ttl_s=ttl, max_jobs=0, inventory=lambda: Inventory(1, 1024, 0, [], []))


def _wait(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_node_cut_off_from_etcd_kills_its_jobs_before_its_lease_can_expire() -> None:
    etcd, jobs = FakeEtcd(), FakeJobs()
    node = _node(etcd, jobs, ttl=2)
    node.start()
    try:
        node._running["pool-1"] = ("local-1", 1)
        assert _wait(lambda: len(etcd.renewed_at) >= 2, 5)
        etcd.up = False
        assert _wait(node.fenced.is_set, 5)
        last_renewal = etcd.renewed_at[-1]
        assert [(j, g) for j, g, _ in jobs.supervisor.killed] == [("local-1", 0)]   # SIGKILL, no grace
        killed_at = jobs.supervisor.killed[0][2]
        # etcd cannot expire the lease before last renewal + TTL: the kill came earlier.
        assert killed_at < last_renewal + 2
        assert node._running == {}
    finally:
        node.stop()


def test_a_lease_etcd_already_expired_fences_at_once_and_the_node_rejoins_under_a_new_lease() -> None:
    etcd, jobs = FakeEtcd(), FakeJobs()
    node = _node(etcd, jobs, ttl=2)
    node.start()
    try:
        node._running["pool-1"] = ("local-1", 1)
        first = node.lease
        etcd.expired = True
        assert _wait(node.fenced.is_set, 3)
        assert jobs.supervisor.killed and jobs.supervisor.killed[0][0] == "local-1"
        assert _wait(lambda: not node.fenced.is_set(), 5)
        assert node.lease != first
    finally:
        node.stop()


def test_a_node_that_cannot_reach_etcd_at_start_starts_anyway_and_joins_when_etcd_answers() -> None:
    etcd, jobs = FakeEtcd(), FakeJobs()
    etcd.up = False
    node = _node(etcd, jobs, ttl=2)
    node.start()
    try:
        assert node.fenced.is_set() and node.lease == 0
        etcd.up = True
        assert _wait(lambda: not node.fenced.is_set(), 5)
        assert node.lease == 1
    finally:
        node.stop()


def test_leaving_the_pool_ends_its_jobs_before_the_lease_is_revoked() -> None:
    etcd, jobs = FakeEtcd(), FakeJobs()
    revoked: list[float] = []
    etcd.revoke = lambda lease: revoked.append(time.monotonic())  # type: ignore[method-assign]
    node = _node(etcd, jobs, ttl=2)
    node.start()
    node._running["pool-1"] = ("local-1", 1)
    node.stop()
    assert jobs.supervisor.killed[0][0] == "local-1" and jobs.supervisor.killed[0][2] <= revoked[0]


def test_every_renewal_hands_the_supervisor_a_deadline_before_the_lease_can_expire() -> None:
    """The supervisor outlives a killed daemon: it must know when the pool jobs have to be dead."""
    etcd, jobs = FakeEtcd(), FakeJobs()
    node = _node(etcd, jobs, ttl=2)
    node.start()
    try:
        node._running["pool-1"] = ("local-1", 1)
        node._running["pool-2"] = ("", 1)   # still starting: armed by its start, not here
        assert _wait(lambda: len(jobs.supervisor.fences) >= 3, 5)
        fences = list(jobs.supervisor.fences)
        assert all(f.job_ids == ("local-1",) for f in fences)
        # Each deadline is earlier than the lease's earliest expiry (the renewal's send time + TTL)...
        for fence in fences:
            renewal = max(t for t in etcd.renewed_at if t <= fence.until_monotonic)
            assert fence.until_monotonic < renewal + 2
        # ...and moves on with the renewals (so a live daemon's jobs are never killed by it).
        assert fences[-1].until_monotonic > fences[0].until_monotonic + 0.5
        etcd.up = False
        count = len(jobs.supervisor.fences)
        time.sleep(1.0)
        assert len(jobs.supervisor.fences) == count   # no renewal, no new deadline
    finally:
        node.stop()
