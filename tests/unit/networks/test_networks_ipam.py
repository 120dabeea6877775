"""Address plans and their allocation in SQLite: no collisions, round-robin, exhaustion."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from capsa.errors import AlreadyExists, Conflict, LimitExceeded
from capsa.networks import _ipam
from capsa.networks._store import NetworkRow, Store
from capsa.state import Database


def test_a_30_pool_gives_host_end_one_and_job_two_in_each_block() -> None:
    slots, address = _ipam.plan("isolated", "10.203.0.0/16", 30)
    assert len(slots) == 16384
    assert address(0) == ("10.203.0.2", 30, "10.203.0.1")
    assert address(1) == ("10.203.0.6", 30, "10.203.0.5")
    assert address(slots[-1]) == ("10.203.255.254", 30, "10.203.255.253")


def test_a_31_pool_packs_twice_as_many_jobs() -> None:
    slots, address = _ipam.plan("isolated", "10.203.0.0/24", 31)
    assert len(slots) == 128
    assert address(0) == ("10.203.0.1", 31, "10.203.0.0")
    assert address(127) == ("10.203.0.255", 31, "10.203.0.254")


def test_a_bridge_keeps_dot_one_for_the_gateway_and_skips_broadcast() -> None:
    slots, address = _ipam.plan("bridge", "10.204.0.0/24", 32)
    assert (slots.start, slots.stop) == (2, 255)
    assert address(2) == ("10.204.0.2", 24, "10.204.0.1")
    assert address(254) == ("10.204.0.254", 24, "10.204.0.1")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(Database(tmp_path / "db"))
    s.upsert_builtin(NetworkRow("tiny", "bridge", "10.9.0.0/29", 32, "tb0", True, 0))
    s.upsert_builtin(NetworkRow("pool", "isolated", "10.8.0.0/22", 30, None, True, 0))
    return s


def _reserve(store: Store, job: str, network: str) -> str:
    row = store.network(network)
    assert row is not None
    slots, address = _ipam.plan(row.kind, row.cidr, row.slot_bits)
    att = store.reserve(job, "bridge", f"/ns/{job}", network=network, slots=slots, address_of=address,
                        veth_host=f"v{job}")
    assert att.ip is not None
    return att.ip


def test_allocation_is_round_robin_and_reports_exhaustion(store: Store) -> None:
    ips = [_reserve(store, f"j{i}", "tiny") for i in range(5)]   # .2 .. .6 of a /29
    assert ips == [f"10.9.0.{i}" for i in range(2, 7)]
    with pytest.raises(LimitExceeded, match="no free address"):
        _reserve(store, "j5", "tiny")
    store.delete_attachment("j1")
    assert _reserve(store, "j6", "tiny") == "10.9.0.3"   # the only free one, even though it was just freed


def test_freed_addresses_are_reused_only_after_the_others(store: Store) -> None:
    first = _reserve(store, "a", "tiny")
    store.delete_attachment("a")
    assert _reserve(store, "b", "tiny") != first


def test_fifty_threads_allocate_fifty_distinct_blocks(store: Store) -> None:
    results: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(50)

    def work(i: int) -> None:
        try:
            barrier.wait()
            results.append(_reserve(store, f"t{i}", "pool"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 50


def test_the_database_itself_refuses_a_duplicate_address(store: Store) -> None:
    _reserve(store, "x", "tiny")
    with pytest.raises(sqlite3.IntegrityError):
        store.db.execute("INSERT INTO network_attachments(job_id, mode, network, slot, ip, netns_path, state,"
                         " created_ns) VALUES('y', 'bridge', 'tiny', 3, '10.9.0.2', '/ns/y', 'ready', 0)")


def test_a_job_is_attached_once(store: Store) -> None:
    _reserve(store, "once", "tiny")
    with pytest.raises(AlreadyExists):
        _reserve(store, "once", "pool")


def test_a_network_with_users_is_not_deleted_and_a_deleted_one_takes_no_users(store: Store) -> None:
    store.insert_network(NetworkRow("user", "bridge", "10.7.0.0/24", 32, "ub0", False, 1))
    _reserve(store, "u1", "user")
    assert store.delete_network("user") == ["u1"]
    assert store.network("user") is not None
    store.delete_attachment("u1")
    assert store.delete_network("user") == []
    assert store.network("user") is None
    slots, address = _ipam.plan("bridge", "10.7.0.0/24", 32)
    with pytest.raises(Conflict):
        store.reserve("u2", "bridge", "/ns/u2", network="user", slots=slots, address_of=address, veth_host="vu2")


def test_instance_id_is_stable_per_database(tmp_path: Path) -> None:
    first = Store(Database(tmp_path / "db")).instance_id()
    assert Store(Database(tmp_path / "db")).instance_id() == first
    assert Store(Database(tmp_path / "other")).instance_id() != first
