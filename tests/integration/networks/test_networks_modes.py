"""Each network mode does what it promises, seen from processes inside the job's namespace."""

from __future__ import annotations

import errno
import ipaddress
import socket
import subprocess
import sys

import pytest
from networks_helpers import connect_from, host_server, in_netns, netns_server

from capsa.networks import NetworkManager
from capsa.networks import _firewall as firewall


def _host_ip() -> str:
    """An address of this host outside any capsa network (the source of the default route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            return s.getsockname()[0]
        except OSError:
            pytest.skip("the host has no IPv4 default route to test reachability against")
            raise


def test_host_mode_records_nothing_and_has_no_namespace(manager: NetworkManager) -> None:
    att = manager.attach("job-host", "host")
    assert (att.mode, att.netns_path, att.ip) == ("host", None, None)
    assert manager.attachments() == []
    assert manager.network_stats("job-host") is None


def test_none_mode_sees_only_loopback_and_cannot_reach_the_host(manager: NetworkManager) -> None:
    att = manager.attach("job-none", "none")
    assert att.netns_path and att.ip is None

    out = in_netns(att.netns_path, "ip", "-o", "link", "show")
    names = [line.split(":")[1].strip() for line in out.stdout.splitlines()]
    assert names == ["lo"]
    assert "UP" in out.stdout.split("<")[1].split(">")[0]

    with host_server("127.0.0.1") as port:
        assert connect_from(att.netns_path, "127.0.0.1", port)["errno"] == errno.ECONNREFUSED
        unreachable = connect_from(att.netns_path, _host_ip(), port)
        assert unreachable["ok"] is False and unreachable["errno"] == errno.ENETUNREACH
        # ...while from the host the very same server answers: the failure is the namespace's doing.
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"x\n")
            assert s.makefile().readline().startswith("hello")


def test_isolated_job_has_its_address_and_reaches_a_host_server_on_the_veth(manager: NetworkManager) -> None:
    att = manager.attach("job-iso", "isolated")
    assert att.netns_path and att.ip and att.gateway and att.veth_host
    assert att.prefixlen == 30
    assert ipaddress.ip_address(att.ip) in ipaddress.ip_network(manager.config.isolated_pool)

    addr = in_netns(att.netns_path, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
    assert f"{att.ip}/30" in addr
    route = in_netns(att.netns_path, "ip", "route", "show", "default").stdout
    assert f"via {att.gateway} dev eth0" in route

    with host_server(att.gateway) as port:
        result = connect_from(att.netns_path, att.gateway, port)
    assert result == {"ok": True, "reply": f"hello {att.ip}", "local": att.ip}
    assert firewall.read_ip_forward() == "1"


def test_isolated_job_gets_a_masquerade_rule_for_its_subnet(manager: NetworkManager) -> None:
    # Outward NAT cannot be exercised without an outside network: prove the rule is in place.
    att = manager.attach("job-nat", "isolated")
    subnet = ipaddress.ip_network(f"{att.ip}/{att.prefixlen}", strict=False)
    nat = subprocess.run(["iptables", "-w", "5", "-t", "nat", "-S", f"{manager.config.chain_prefix}-POSTROUTING"],
                         capture_output=True, text=True, check=True).stdout
    assert f"-A {manager.config.chain_prefix}-POSTROUTING -s {subnet} ! -o {att.veth_host}" in nat
    assert "-j MASQUERADE" in nat
    jump = subprocess.run(["iptables", "-w", "5", "-t", "nat", "-S", "POSTROUTING"],
                          capture_output=True, text=True, check=True).stdout
    assert f"-j {manager.config.chain_prefix}-POSTROUTING" in jump


def test_isolated_jobs_cannot_open_connections_to_each_other(manager: NetworkManager) -> None:
    a = manager.attach("job-iso-a", "isolated")
    b = manager.attach("job-iso-b", "isolated")
    assert a.ip != b.ip and a.netns_path and b.netns_path and a.ip
    with netns_server(a.netns_path, a.ip) as port:
        result = connect_from(b.netns_path, a.ip, port, timeout=1.0)
        assert result["ok"] is False
        # The server itself is fine: reachable from the host, through the veth.
        with socket.create_connection((a.ip, port), timeout=2) as s:
            s.sendall(b"x\n")
            assert s.makefile().readline().strip() == f"pong from {a.ip}"


def test_jobs_on_the_default_bridge_reach_each_other(manager: NetworkManager) -> None:
    a = manager.attach("job-br-a", "bridge")
    b = manager.attach("job-br-b", "bridge")
    assert a.netns_path and b.netns_path and a.ip and b.ip
    assert a.gateway == b.gateway == str(ipaddress.ip_network(manager.config.bridge_cidr)[1])
    assert a.ip != b.ip
    with netns_server(a.netns_path, a.ip) as port:
        result = connect_from(b.netns_path, a.ip, port)
    assert result == {"ok": True, "reply": f"pong from {a.ip}", "local": b.ip}
    with host_server(b.gateway or "") as port:  # and the host, through the bridge's address
        assert connect_from(b.netns_path, b.gateway or "", port)["ok"] is True


def test_jobs_on_different_networks_cannot_reach_each_other(manager: NetworkManager) -> None:
    manager.create("tnet-other", "10.235.7.0/24")
    a = manager.attach("job-net-a", "bridge")
    b = manager.attach("job-net-b", "tnet-other")
    assert b.mode == "bridge" and b.network == "tnet-other" and b.ip and b.ip.startswith("10.235.7.")
    assert a.netns_path and b.netns_path and a.ip
    with netns_server(a.netns_path, a.ip) as port:
        assert connect_from(b.netns_path, a.ip, port, timeout=1.0)["ok"] is False


def test_network_stats_count_the_jobs_traffic(manager: NetworkManager) -> None:
    att = manager.attach("job-stats", "bridge")
    assert att.netns_path and att.gateway
    before = manager.network_stats("job-stats")
    assert before is not None and before.interfaces == ("eth0",)
    with host_server(att.gateway) as port:
        for _ in range(3):
            assert connect_from(att.netns_path, att.gateway, port)["ok"] is True
    after = manager.network_stats("job-stats")
    assert after is not None
    assert after.tx_packets >= before.tx_packets + 3 * 3  # SYN, data, ACK/FIN at least, per connection
    assert after.tx_bytes > before.tx_bytes + 3 * 5
    assert after.rx_bytes > before.rx_bytes


def test_none_mode_stats_are_zero_without_interfaces(manager: NetworkManager) -> None:
    manager.attach("job-none-stats", "none")
    stats = manager.network_stats("job-none-stats")
    assert stats is not None and stats.interfaces == () and stats.rx_bytes == stats.tx_bytes == 0


_STAGE_ONE = r"""
import os, sys
from capsa import linux
from capsa.runtime.zygote import JOB_NAMESPACES
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CLOEXEC)
linux.setns(fd, linux.CLONE_NEWNET)
os.close(fd)
linux.unshare(JOB_NAMESPACES)
pid = os.fork()
if pid == 0:
    os.execvp("ip", ["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_launch_like_stage_one_joins_the_namespace_then_unshares_the_rest(manager: NetworkManager) -> None:
    # The documented integration: setns(netns) first, then the launcher's own unshare + fork.
    att = manager.attach("job-launch", "bridge")
    assert att.netns_path
    out = subprocess.run([sys.executable, "-c", _STAGE_ONE, att.netns_path], capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == 0, out.stderr
    assert f" {att.ip}/{att.prefixlen} " in out.stdout
