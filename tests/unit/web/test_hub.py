"""The job-list cache of capsa.web.hub.Node: one ListJobs shared, stale lists served while one refresh runs."""

from __future__ import annotations

import threading
import time

from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from capsa.config import NodeConfig
from capsa.pki import Role, create_ca, issue_client_cert
from capsa.web.hub import Node

_CA = create_ca("hub test CA")


class CountingClient:
    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay
        self.release = threading.Event()
        self.release.set()

    def list_jobs(self, *, all: bool = False) -> list[pb.Job]:
        assert all, "the dashboard lists ended jobs too"
        self.release.wait(5)
        time.sleep(self.delay)
        self.calls += 1
        return [pb.Job(id=f"{self.calls:032x}")]

    def close(self) -> None:
        pass


def _node(client: CountingClient) -> Node:
    issued = issue_client_cert(_CA, name="hub", role=Role.READER)
    config = NodeConfig(address="127.0.0.1:7443", ca_pem=_CA.cert_pem, cert_pem=issued.cert_pem, key_pem=issued.key_pem)
    return Node("n", config, client=client)  # type: ignore[arg-type]


def _wait(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_first_call_fetches_then_the_list_is_shared_until_it_is_stale() -> None:
    client = CountingClient()
    node = _node(client)
    first = node.jobs_blocking(max_age=0.2)
    assert client.calls == 1 and node.jobs_blocking(max_age=0.2) is first
    time.sleep(0.25)
    client.release.clear()                           # hold the background refresh
    stale = node.jobs_blocking(max_age=0.2)
    assert stale is first, "a stale list is served at once"
    node.jobs_blocking(max_age=0.2)                  # no second refresh while one runs
    client.release.set()
    _wait(lambda: client.calls == 2)
    _wait(lambda: node.jobs_blocking(max_age=10) is not first)
    assert client.calls == 2


def test_invalidate_refreshes_in_the_background() -> None:
    client = CountingClient()
    node = _node(client)
    node.jobs_blocking()
    node.invalidate_jobs()
    _wait(lambda: client.calls == 2)


def test_slow_lists_are_refreshed_less_often() -> None:
    client = CountingClient(delay=0.1)
    node = _node(client)
    node.jobs_blocking(max_age=0.0)
    time.sleep(0.15)
    node.jobs_blocking(max_age=0.0)                  # 0.15 s < 3 x 0.1 s: still fresh enough
    time.sleep(0.05)
    assert client.calls == 1
