"""The scheduler's election against a real etcd: a campaign that timed out is never re-sent to another member
(the first member deletes the candidate key when it cancels, possibly under a re-sent campaign that adopted it),
and a leader whose key is gone stands down and campaigns again instead of leading with binds that all fail."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from capsa.cluster.etcd import EtcdClient
from capsa.cluster.model import ELECTION
from capsa.cluster.scheduler import Scheduler


@pytest.fixture
def silent_member() -> Iterator[str]:
    """An endpoint that accepts connections and reads requests but never answers (a member that hangs)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()


def test_a_campaign_that_timed_out_on_one_member_is_not_sent_to_the_next(etcd_url: str, silent_member: str) -> None:
    real = EtcdClient([etcd_url])
    lease = real.grant(10)
    etcd = EtcdClient([silent_member, etcd_url], timeout=0.5)   # tries the silent member first
    try:
        assert etcd.campaign(ELECTION, lease, "s1", timeout=0.5) is None
        assert real.range(ELECTION)[0] == []   # no candidate key reached the real member
        assert etcd.get("/nothing") is None    # reads still move on to the next member
    finally:
        real.revoke(lease)


def test_a_leader_whose_key_vanished_stands_down_and_campaigns_again(etcd_url: str) -> None:
    etcd = EtcdClient([etcd_url])
    sched = Scheduler(etcd, name="s1", lease_ttl_s=2, retention_s=0)
    runner = threading.Thread(target=sched.run, daemon=True)
    runner.start()
    try:
        assert sched.leading.wait(10)
        first = sched.lease
        etcd.delete(sched.leader_key)   # what a cancelled campaign's clean-up did under a re-sent one
        deadline = time.monotonic() + 10
        while not (sched.leading.is_set() and sched.lease != first):
            assert time.monotonic() < deadline, "the scheduler kept leading without a leader key"
            time.sleep(0.05)
        leader = etcd.leader(ELECTION)
        assert leader is not None and leader.value == b"s1" and leader.lease == sched.lease
    finally:
        sched.stop_event.set()
        runner.join(10)
