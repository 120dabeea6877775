"""Named networks, allocation under concurrency, detach, reconcile after a crash, teardown."""

from __future__ import annotations

import ipaddress
import subprocess
import threading
from pathlib import Path

import pytest
from networks_helpers import in_netns, proc_mounts_under

from capsa.errors import AlreadyExists, Conflict, InvalidArgument, NotFound
from capsa.networks import NetworkManager
from capsa.networks import _links as links
from capsa.networks import _netns as netns
from capsa.state import Database


def _rules(manager: NetworkManager, tag_part: str) -> list[str]:
    lines: list[str] = []
    for table, chain in (("filter", "FORWARD"), ("nat", "POSTROUTING")):
        out = subprocess.run(["iptables", "-w", "5", "-t", table, "-S", f"{manager.config.chain_prefix}-{chain}"],
                             capture_output=True, text=True)
        lines += [line for line in out.stdout.splitlines() if tag_part in line]
    return lines


def test_named_network_create_ls_rm_and_rm_refused_while_attached(manager: NetworkManager) -> None:
    net = manager.create("tnet-a", "10.235.1.0/24")
    assert net.bridge and net.bridge.startswith("capsa-") and len(net.bridge) <= 15
    assert [n.name for n in manager.list()] == ["bridge", "isolated", "tnet-a"]

    att = manager.attach("job-on-a", "tnet-a")
    assert att.network == "tnet-a" and att.ip == "10.235.1.2" and att.gateway == "10.235.1.1"
    assert manager.get("tnet-a").attached == 1
    assert net.bridge in links.link_names()
    bridge_ports = subprocess.run(["ip", "-o", "link", "show", "master", net.bridge],
                                  capture_output=True, text=True).stdout
    assert att.veth_host and att.veth_host in bridge_ports

    with pytest.raises(Conflict, match="in use by 1 job"):
        manager.remove("tnet-a")
    assert "tnet-a" in [n.name for n in manager.list()]

    manager.detach("job-on-a")
    manager.remove("tnet-a")
    assert [n.name for n in manager.list()] == ["bridge", "isolated"]
    assert net.bridge not in links.link_names()
    assert _rules(manager, ":net:tnet-a") == []
    with pytest.raises(NotFound):
        manager.remove("tnet-a")
    with pytest.raises(NotFound):
        manager.attach("job-late", "tnet-a")


def test_named_network_creation_refuses_bad_names_duplicates_and_overlaps(manager: NetworkManager) -> None:
    manager.create("tnet-b", "10.235.2.0/24")
    with pytest.raises(AlreadyExists):
        manager.create("tnet-b", "10.235.3.0/24")
    with pytest.raises(Conflict, match="overlaps network 'tnet-b'"):
        manager.create("tnet-c", "10.235.2.128/25")
    with pytest.raises(Conflict, match="overlaps network 'bridge'"):
        manager.create("tnet-c", manager.config.bridge_cidr)
    with pytest.raises(InvalidArgument, match="reserved"):
        manager.create("isolated", "10.235.4.0/24")
    with pytest.raises(InvalidArgument):
        manager.create("Bad Name", "10.235.4.0/24")
    with pytest.raises(InvalidArgument):
        manager.create("tnet-d", "10.235.4.0/31")
    with pytest.raises(InvalidArgument, match="built in"):
        manager.remove("bridge")


def test_named_network_refuses_a_range_the_host_already_routes(manager: NetworkManager) -> None:
    words = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                           capture_output=True, text=True).stdout.split()
    addresses = [w.split("/")[0] for w in words if "/" in w and w[0].isdigit()]
    if not addresses:
        pytest.skip("the host has no global IPv4 address")
    taken = ipaddress.ip_network(f"{addresses[0]}/24", strict=False)
    with pytest.raises(Conflict, match="host interface"):
        manager.create("tnet-host", str(taken))


def test_fifty_concurrent_attachments_get_distinct_addresses(manager: NetworkManager) -> None:
    results: dict[str, str] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(50)

    def attach(i: int) -> None:
        mode = "isolated" if i % 2 else "bridge"
        try:
            start.wait()
            att = manager.attach(f"job-c{i:02d}", mode)
            with lock:
                results[att.job_id] = att.ip or ""
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=attach, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == 50 and len(set(results.values())) == 50
    for att in manager.attachments():  # the kernel agrees with the database, for every job
        assert att.netns_path
        shown = in_netns(att.netns_path, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
        assert f" {att.ip}/{att.prefixlen} " in shown

    detachers = [threading.Thread(target=manager.detach, args=(job,)) for job in results]
    for t in detachers:
        t.start()
    for t in detachers:
        t.join(60)
    assert manager.attachments() == []


def test_addresses_are_not_reused_at_once_after_detach(manager: NetworkManager) -> None:
    first = manager.attach("job-r1", "bridge")
    manager.detach("job-r1")
    second = manager.attach("job-r2", "bridge")
    assert second.ip != first.ip


def test_detach_removes_netns_veth_rules_and_frees_the_address(manager: NetworkManager, tmp_path: Path) -> None:
    att = manager.attach("job-gone", "isolated")
    assert att.netns_path and att.veth_host
    assert netns.is_netns(att.netns_path) and att.veth_host in links.link_names()
    assert len(_rules(manager, ":job:job-gone")) == 4

    assert manager.detach("job-gone") is True
    assert not Path(att.netns_path).exists()
    assert proc_mounts_under(tmp_path) == []
    assert att.veth_host not in links.link_names()
    assert _rules(manager, ":job:job-gone") == []
    with pytest.raises(NotFound):
        manager.attachment("job-gone")
    assert manager.detach("job-gone") is False  # idempotent


def test_double_attach_is_refused(manager: NetworkManager) -> None:
    manager.attach("job-twice", "none")
    with pytest.raises(AlreadyExists):
        manager.attach("job-twice", "bridge")
    with pytest.raises(NotFound):
        manager.attach("job-nowhere", "no-such-net")
    with pytest.raises(InvalidArgument):
        manager.attach("../escape", "none")


def test_reconcile_after_a_crash_cleans_dead_jobs_and_keeps_running_ones(
    manager: NetworkManager, tmp_path: Path
) -> None:
    alive = manager.attach("job-alive", "isolated")
    dead_bridge = manager.attach("job-dead-br", "bridge")
    dead_none = manager.attach("job-dead-none", "none")
    lost = manager.attach("job-lost", "isolated")
    # A crash the database never saw the end of: kernel objects exist, the row does not.
    db = Database(tmp_path / "capsa.db")
    db.execute("DELETE FROM network_attachments WHERE job_id = 'job-lost'")

    # The daemon restarts: a new manager on the same database, told which jobs still run.
    restarted = NetworkManager(db, config=manager.config)
    report = restarted.reconcile(["job-alive"])

    assert report.kept == ["job-alive"]
    assert sorted(report.detached) == ["job-dead-br", "job-dead-none"]
    assert any("job-lost" in item for item in report.leftovers)
    names = links.link_names()
    for gone in (dead_bridge, dead_none, lost):
        assert gone.netns_path and not Path(gone.netns_path).exists()
        assert gone.veth_host is None or gone.veth_host not in names
    assert _rules(manager, ":job:job-lost") == []
    # The survivor is untouched and still wired.
    assert alive.netns_path and netns.is_netns(alive.netns_path) and alive.veth_host in names
    assert restarted.attachment("job-alive").ip == alive.ip
    assert len(_rules(manager, ":job:job-alive")) == 4
    db.close()


def test_reconcile_puts_back_rules_flushed_behind_capsas_back(manager: NetworkManager) -> None:
    manager.attach("job-fw", "isolated")
    manager.attach("job-fw-br", "bridge")
    chain = f"{manager.config.chain_prefix}-FORWARD"
    subprocess.run(["iptables", "-w", "5", "-F", chain], check=True)
    subprocess.run(["iptables", "-w", "5", "-t", "nat", "-F", f"{manager.config.chain_prefix}-POSTROUTING"],
                   check=True)
    report = manager.reconcile(["job-fw", "job-fw-br"])
    assert "rules of job job-fw" in report.repaired and "network bridge" in report.repaired
    assert len(_rules(manager, ":job:job-fw\"")) == 4
    assert len(_rules(manager, ":net:bridge")) == 5


def test_teardown_waits_for_the_last_job(manager: NetworkManager) -> None:
    manager.attach("job-last", "bridge")
    assert manager.teardown() is False
    assert manager.config.bridge_name in links.link_names()
    manager.detach("job-last")
    assert manager.teardown() is True
    assert manager.config.bridge_name not in links.link_names()


def test_two_instances_on_one_host_keep_their_namespaces_apart(tmp_path: Path, net_config) -> None:  # type: ignore[no-untyped-def]
    """Each instance pins its namespaces under /run/capsa/<instance>/netns by default, so one's
    reconcile (which removes files it does not know) never removes the other's (test daemons, pool nodes)."""
    import dataclasses

    config = dataclasses.replace(net_config, netns_dir=None)
    dbs = [Database(tmp_path / f"capsa-{i}.db") for i in (0, 1)]
    first, second = (NetworkManager(db, config=config) for db in dbs)
    try:
        assert first.netns_dir != second.netns_dir
        assert first.netns_dir == Path("/run/capsa") / first.instance / "netns"
        att = first.attach("a" * 32, "none")
        assert att.netns_path and netns.is_netns(att.netns_path)
        second.reconcile([])
        assert netns.is_netns(att.netns_path), "another instance's reconcile removed this job's namespace"
    finally:
        for mgr in (first, second):
            for a in mgr.attachments():
                mgr.detach(a.job_id)
            assert mgr.teardown()
            assert not mgr.netns_dir.parent.exists(), "the instance's run directory was left behind"
        for db in dbs:
            db.close()
