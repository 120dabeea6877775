"""Published ports on the real kernel: DNAT from 127.0.0.1 (and 0.0.0.0) to a job, conflicts named,
all-or-nothing on failure, rules gone on detach and after a restart's reconcile."""

from __future__ import annotations

import socket
import subprocess

import pytest
from networks_helpers import netns_server

from capsa.errors import Conflict, InvalidArgument
from capsa.networks import NetworkManager
from capsa.networks._ports import parse_port, parse_ports
from capsa.state import Database
from tests.fixtures.daemon import free_port


def _ask(port: int, host: str = "127.0.0.1") -> str:
    with socket.create_connection((host, port), timeout=3) as s:
        s.sendall(b"ping\n")
        return s.makefile().readline().strip()


def _rules(manager: NetworkManager, job_id: str) -> list[str]:
    tag = manager._fw.tag("port", job_id)
    return [line for lines in manager._fw.rules(tag).values() for line in lines]


def _rows(manager: NetworkManager) -> dict[str, list[str]]:
    return {job: [str(p) for p in ports] for job, ports in manager.published().items()}


def test_a_job_port_is_reached_through_127_0_0_1_and_unpublished_on_detach(manager: NetworkManager) -> None:
    att = manager.attach("job-web", "bridge")
    assert att.ip and att.netns_path
    with netns_server(att.netns_path, att.ip) as job_port:
        host_port = free_port()
        manager.publish("job-web", parse_ports([f"{host_port}:{job_port}"]))
        assert _ask(host_port) == f"pong from {att.ip}"
        assert _rows(manager) == {"job-web": [f"127.0.0.1:{host_port}->{job_port}/tcp"]}
        # 127.0.0.1 was published, not the host's other addresses
        dnat = [r for r in _rules(manager, "job-web") if "DNAT" in r and "--to-destination" in r]
        assert dnat and all("-d 127.0.0.1/32" in r for r in dnat)
    manager.detach("job-web")
    assert _rules(manager, "job-web") == [] and _rows(manager) == {}


def test_isolated_jobs_publish_too(manager: NetworkManager) -> None:
    att = manager.attach("job-iso-web", "isolated")
    with netns_server(att.netns_path or "", att.ip or "") as job_port:
        host_port = free_port()
        manager.publish("job-iso-web", parse_ports([f"127.0.0.1:{host_port}:{job_port}/tcp"]))
        assert _ask(host_port) == f"pong from {att.ip}"


def test_a_port_held_by_another_job_or_a_host_socket_is_refused_naming_the_holder(manager: NetworkManager) -> None:
    manager.attach("job-a", "bridge")
    manager.attach("job-b", "bridge")
    taken = free_port()
    manager.publish("job-a", parse_ports([f"{taken}:80"]))
    before = (_rules(manager, "job-a"), _rows(manager))
    with pytest.raises(Conflict, match="published by job job-a"):
        manager.publish("job-b", parse_ports([f"{free_port()}:81", f"0.0.0.0:{taken}:80"]))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        with pytest.raises(Conflict, match=r"a host process \(pid \d+: .*python"):
            manager.publish("job-b", parse_ports([f"{port}:80"]))
    # Nothing of job-b was kept, and job-a's publication is untouched.
    assert _rules(manager, "job-b") == []
    assert (_rules(manager, "job-a"), _rows(manager)) == before
    manager.publish("job-b", parse_ports([f"{taken}:80/udp"]))   # the same number over UDP is another port
    assert len(_rows(manager)["job-b"]) == 1


def test_publishing_needs_a_network_with_addresses(manager: NetworkManager) -> None:
    manager.attach("job-none", "none")
    with pytest.raises(InvalidArgument, match="bridge, isolated or named"):
        manager.publish("job-none", parse_ports(["8080:80"]))
    assert _rows(manager) == {}


@pytest.mark.parametrize("spec", ["80", "a:80", "70000:80", "8080:0", "1.2.3:80:80", "8080:80/sctp", ":80:80"])
def test_bad_specs_are_refused(spec: str) -> None:
    with pytest.raises(InvalidArgument, match="-p"):
        parse_port(spec)


def test_specs_default_to_loopback_and_tcp() -> None:
    assert str(parse_port("8080:80")) == "127.0.0.1:8080->80/tcp"
    assert str(parse_port("0.0.0.0:53:5353/udp")) == "0.0.0.0:53->5353/udp"
    with pytest.raises(InvalidArgument, match="twice"):
        parse_ports(["8080:80", "0.0.0.0:8080:81"])


def test_reconcile_after_a_crash_keeps_running_jobs_ports_and_drops_the_others(manager: NetworkManager,
                                                                               tmp_path) -> None:
    gone = manager.attach("job-gone", "bridge")
    kept = manager.attach("job-kept", "bridge")
    assert gone.ip and kept.ip
    manager.publish("job-gone", parse_ports([f"{free_port()}:80"]))
    with netns_server(kept.netns_path or "", kept.ip) as job_port:
        host_port = free_port()
        manager.publish("job-kept", parse_ports([f"{host_port}:{job_port}"]))
        # An admin flushed our DNAT chain while the daemon was down (kill -9): a new manager on the
        # same database (the restarted daemon) repairs what running jobs need and drops the rest.
        subprocess.run(["iptables", "-w", "5", "-t", "nat", "-F", manager._fw.ports], check=True)
        restarted = NetworkManager(Database(tmp_path / "capsa.db"), config=manager.config)
        restarted.reconcile(["job-kept"])
        assert _ask(host_port) == f"pong from {kept.ip}"
    assert _rules(manager, "job-gone") == []
    assert set(_rows(manager)) == {"job-kept"}
