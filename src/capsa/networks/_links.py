"""Interfaces, over netlink (pyroute2): bridges, veth pairs, a job's netns set-up, counters.

Every capsa-made interface on the host carries an alias
``capsa:<instance>:<kind>:<name>`` (``ip link`` shows it), so reconcile can find
what this instance created even when its database lost track of it.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from capsa.errors import AlreadyExists, CapsaError, FailedPrecondition, NotFound
from capsa.networks import _netns
from capsa.networks.model import NetStats

__all__ = [
    "JOB_IFNAME",
    "HostLink",
    "JobAddress",
    "default_mtu",
    "delete_link",
    "ensure_bridge",
    "host_networks",
    "link_names",
    "owned_links",
    "read_stats",
    "setup_job",
]

JOB_IFNAME = "eth0"


@dataclass(frozen=True)
class HostLink:
    name: str
    kind: str
    alias: str


@dataclass(frozen=True)
class JobAddress:
    """How the job's interface is wired: an address on it, and the host end's role."""

    ip: str
    prefixlen: int
    gateway: str
    veth_host: str
    alias: str
    mtu: int
    host_ip: str | None = None      # isolated: the gateway lives on the host end of the veth
    bridge: str | None = None       # bridge: the host end is enslaved to this bridge


def netlink_error(exc: NetlinkError, what: str) -> CapsaError:
    message = f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}"
    if exc.code == errno.EEXIST:
        return AlreadyExists(message)
    if exc.code in (errno.ENODEV, errno.ENOENT):
        return NotFound(message)
    return FailedPrecondition(message)


@contextmanager
def _errors(what: str) -> Iterator[None]:
    try:
        yield
    except NetlinkError as exc:
        raise netlink_error(exc, what) from exc


def _attr(msg: object, name: str) -> object:
    return msg.get_attr(name)  # type: ignore[attr-defined]


def _kind(msg: object) -> str:
    info = _attr(msg, "IFLA_LINKINFO")
    return str(info.get_attr("IFLA_INFO_KIND") or "") if info is not None else ""  # type: ignore[attr-defined]


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


# -- host side ---------------------------------------------------------------------------
def link_names() -> set[str]:
    with IPRoute() as ipr:
        return {str(_attr(m, "IFLA_IFNAME")) for m in ipr.get_links()}


def owned_links(alias_prefix: str) -> list[HostLink]:
    """Host interfaces whose alias starts with ``alias_prefix``."""
    out: list[HostLink] = []
    with IPRoute() as ipr:
        for msg in ipr.get_links():
            alias = _attr(msg, "IFLA_IFALIAS")
            if isinstance(alias, str) and alias.startswith(alias_prefix):
                out.append(HostLink(str(_attr(msg, "IFLA_IFNAME")), _kind(msg), alias))
    return out


def delete_link(name: str) -> bool:
    """Delete a host interface (a veth takes its peer with it). False if it did not exist."""
    with IPRoute() as ipr:
        index = _index(ipr, name)
        if index is None:
            return False
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise netlink_error(exc, f"delete interface {name}") from exc
        return True


def default_mtu() -> int:
    """The MTU of the interface carrying the host's default route (1500 when there is none)."""
    with IPRoute() as ipr:
        for route in ipr.get_routes(family=socket.AF_INET, table=254):
            if route["dst_len"] == 0 and _attr(route, "RTA_OIF"):
                links = ipr.get_links(int(_attr(route, "RTA_OIF")))  # type: ignore[call-overload]
                if links:
                    return int(_attr(links[0], "IFLA_MTU"))
    return 1500


def host_networks() -> list[tuple[str, ipaddress.IPv4Network]]:
    """(interface, network) of every IPv4 address and non-default main-table route on the host."""
    out: list[tuple[str, ipaddress.IPv4Network]] = []
    with IPRoute() as ipr:
        names = {int(m["index"]): str(_attr(m, "IFLA_IFNAME")) for m in ipr.get_links()}
        for msg in ipr.get_addr(family=socket.AF_INET):
            net = ipaddress.IPv4Network(f"{_attr(msg, 'IFA_ADDRESS')}/{msg['prefixlen']}", strict=False)
            out.append((names.get(int(msg["index"]), "?"), net))
        for route in ipr.get_routes(family=socket.AF_INET, table=254):
            dst = _attr(route, "RTA_DST")
            if route["dst_len"] and dst:
                oif = _attr(route, "RTA_OIF")
                name = names.get(int(oif), "?") if oif else "?"  # type: ignore[call-overload]
                out.append((name, ipaddress.IPv4Network(f"{dst}/{route['dst_len']}", strict=False)))
    return out


def ensure_bridge(name: str, gateway: str, prefixlen: int, mtu: int, alias: str) -> bool:
    """Create bridge ``name`` holding ``gateway/prefixlen`` (or complete an existing one). True if created."""
    created = False
    with IPRoute() as ipr, _errors(f"bridge {name}"):
        index = _index(ipr, name)
        if index is None:
            try:
                ipr.link("add", ifname=name, kind="bridge", mtu=mtu)
                created = True
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:  # another thread won the race: fine
                    raise
            index = _index(ipr, name)
            if index is None:
                raise FailedPrecondition(f"bridge {name} vanished while being created")
        else:
            kind = _kind(ipr.get_links(index)[0])
            if kind != "bridge":
                raise AlreadyExists(f"interface {name} exists and is a {kind or 'non-bridge'} interface")
        ipr.link("set", index=index, ifalias=alias)
        present = {(str(_attr(a, "IFA_ADDRESS")), int(a["prefixlen"]))
                   for a in ipr.get_addr(index=index, family=socket.AF_INET)}
        if (gateway, prefixlen) not in present:
            try:
                ipr.addr("add", index=index, address=gateway, prefixlen=prefixlen)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
        ipr.link("set", index=index, state="up")
    return created


# -- the job's namespace ------------------------------------------------------------------
def setup_job(netns_path: Path, address: JobAddress | None) -> None:
    """Create the job's namespace at ``netns_path``: loopback up, and the veth wired when given.

    Runs in one throw-away thread: a netlink socket opened first (still in the
    host namespace) configures the host end, a second one opened after
    ``unshare`` configures the job's end.
    """

    def work() -> None:
        with IPRoute() as host:
            _netns.bind_current(netns_path)
            with IPRoute() as ns, _errors(f"namespace {netns_path}"):
                lo = _index(ns, "lo")
                ns.link("set", index=lo, state="up")
                if address is not None:
                    _wire_veth(host, ns, netns_path, address)

    _netns.spawn(work, name="capsa-netns-setup")


def _wire_veth(host: IPRoute, ns: IPRoute, netns_path: Path, a: JobAddress) -> None:
    nsfd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _errors(f"create veth {a.veth_host}"):
            host.link("add", ifname=a.veth_host, kind="veth", mtu=a.mtu,
                      peer={"ifname": JOB_IFNAME, "net_ns_fd": nsfd})
    finally:
        os.close(nsfd)
    with _errors(f"configure {a.veth_host}"):
        index = _index(host, a.veth_host)
        host.link("set", index=index, ifalias=a.alias)
        if a.bridge is not None:
            bridge = _index(host, a.bridge)
            if bridge is None:
                raise NotFound(f"bridge {a.bridge} does not exist")
            host.link("set", index=index, master=bridge)
        if a.host_ip is not None:
            host.addr("add", index=index, address=a.host_ip, prefixlen=a.prefixlen)
        host.link("set", index=index, state="up")
    with _errors(f"configure {JOB_IFNAME} in {netns_path}"):
        eth = _index(ns, JOB_IFNAME)
        ns.link("set", index=eth, mtu=a.mtu)
        ns.addr("add", index=eth, address=a.ip, prefixlen=a.prefixlen)
        ns.link("set", index=eth, state="up")
        ns.route("add", dst="0.0.0.0/0", gateway=a.gateway)


def read_stats(netns_path: Path) -> NetStats:
    """Counters of every non-loopback interface inside the namespace (from its /proc/net/dev)."""

    def work() -> str:
        _netns.enter(netns_path)
        with open("/proc/thread-self/net/dev", encoding="ascii") as f:
            return f.read()

    rx_b = tx_b = rx_p = tx_p = rx_d = tx_d = 0
    names: list[str] = []
    for line in _netns.spawn(work, name="capsa-netns-stats").splitlines()[2:]:
        name, _, rest = line.partition(":")
        name = name.strip()
        if not rest or name == "lo":
            continue
        f = [int(x) for x in rest.split()]
        # /proc/net/dev: rx bytes packets errs drop fifo frame compressed multicast | tx bytes packets errs drop ...
        rx_b, rx_p, rx_d = rx_b + f[0], rx_p + f[1], rx_d + f[3]
        tx_b, tx_p, tx_d = tx_b + f[8], tx_p + f[9], tx_d + f[11]
        names.append(name)
    return NetStats(rx_bytes=rx_b, tx_bytes=tx_b, rx_packets=rx_p, tx_packets=tx_p,
                    rx_dropped=rx_d, tx_dropped=tx_d, interfaces=tuple(sorted(names)))
