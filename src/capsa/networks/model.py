"""What the network package hands out: configuration, attachments, networks, counters."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from capsa.errors import InvalidArgument

__all__ = [
    "BUILTIN_MODES",
    "Attachment",
    "NetStats",
    "Network",
    "NetworkConfig",
    "ReconcileReport",
    "validate_job_id",
    "validate_network_name",
]

HOST, NONE, ISOLATED, BRIDGE = "host", "none", "isolated", "bridge"
BUILTIN_MODES = (HOST, NONE, ISOLATED, BRIDGE)
# Names a user network may not take: the modes, plus what a user would confuse with them.
RESERVED_NAMES = frozenset({*BUILTIN_MODES, "default"})

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
# Same rule as capsa.config.paths: a job id is one safe path component (it names the netns file).
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_CHAIN_PREFIX_RE = re.compile(r"^[A-Z][A-Z0-9_-]{0,15}$")


def validate_network_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid network name {name!r}: use 1-32 of a-z 0-9 _ . - starting with a letter or digit"
        )
    if name in RESERVED_NAMES:
        raise InvalidArgument(f"network name {name!r} is reserved (it names a built-in network mode)")
    return name


def validate_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _JOB_ID_RE.fullmatch(job_id):
        raise InvalidArgument(f"invalid job id {job_id!r}")
    return job_id


def parse_cidr(text: str, what: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidArgument(f"{what}: {text!r} is not a network in CIDR notation ({exc})") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise InvalidArgument(f"{what}: {text!r} is IPv6; capsa networks are IPv4")
    return net


@dataclass(frozen=True)
class NetworkConfig:
    """Host-wide network settings (the ``network`` section of the server config).

    ``netns_dir`` belongs to one capsa instance: :meth:`NetworkManager.reconcile`
    removes any namespace file in it that the instance's database does not know. None (the
    default) is ``/run/capsa/<instance>/netns``, so two instances on one host (test daemons, the
    nodes of a pool on one machine) never remove each other's namespaces.
    """

    netns_dir: Path | None = None
    isolated_pool: str = "10.203.0.0/16"
    isolated_prefixlen: int = 30          # 30 (host .1, job .2) or 31 (RFC 3021 point-to-point)
    bridge_name: str = "capsa0"
    bridge_cidr: str = "10.204.0.0/24"
    mtu: int | None = None                # None: the MTU of the host's default-route interface
    iptables: str = "iptables"            # the distribution's choice (nft or legacy backend)
    chain_prefix: str = "CAPSA"           # chains <prefix>-FORWARD (filter), <prefix>-POSTROUTING (nat)

    def __post_init__(self) -> None:
        if self.netns_dir is not None:
            object.__setattr__(self, "netns_dir", Path(self.netns_dir))
        pool = parse_cidr(self.isolated_pool, "isolated_pool")
        bridge = parse_cidr(self.bridge_cidr, "bridge_cidr")
        if self.isolated_prefixlen not in (30, 31):
            raise InvalidArgument(f"isolated_prefixlen must be 30 or 31, not {self.isolated_prefixlen}")
        if pool.prefixlen > self.isolated_prefixlen:
            raise InvalidArgument(f"isolated_pool {pool} is smaller than one /{self.isolated_prefixlen}")
        if bridge.prefixlen > 30:
            raise InvalidArgument(f"bridge_cidr {bridge} leaves no room for a gateway and a job")
        if pool.overlaps(bridge):
            raise InvalidArgument(f"isolated_pool {pool} overlaps bridge_cidr {bridge}")
        if not _IFNAME_RE.fullmatch(self.bridge_name):
            raise InvalidArgument(f"bridge_name {self.bridge_name!r} is not a valid interface name")
        if self.mtu is not None and not 576 <= self.mtu <= 65535:
            raise InvalidArgument(f"mtu {self.mtu} is out of range 576-65535")
        if not _CHAIN_PREFIX_RE.fullmatch(self.chain_prefix):
            raise InvalidArgument(f"chain_prefix {self.chain_prefix!r}: use 1-16 of A-Z 0-9 _ -")


@dataclass(frozen=True)
class Attachment:
    """A job's place on the network, as the launcher and ``inspect`` need it.

    ``netns_path`` is None only in ``host`` mode (nothing to join). ``ip`` and
    ``gateway`` are None in ``host`` and ``none`` modes.
    """

    job_id: str
    mode: str                       # host | none | isolated | bridge (a named network is "bridge")
    network: str | None = None      # "isolated", "bridge" or the named network; None for host/none
    netns_path: str | None = None
    ip: str | None = None
    prefixlen: int | None = None
    gateway: str | None = None
    veth_host: str | None = None
    interface: str | None = None    # the job's interface inside its netns ("eth0")


@dataclass(frozen=True)
class Network:
    name: str
    kind: str                       # "bridge" (default or named) | "isolated" (a pool of /30s)
    cidr: str
    bridge: str | None
    builtin: bool
    attached: int                   # jobs attached right now
    created_ns: int = 0


@dataclass(frozen=True)
class NetStats:
    """Counters of a job's interfaces (loopback excluded), as seen inside its netns."""

    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    rx_dropped: int = 0
    tx_dropped: int = 0
    interfaces: tuple[str, ...] = ()


@dataclass
class ReconcileReport:
    kept: list[str] = field(default_factory=list)          # job ids left attached
    detached: list[str] = field(default_factory=list)      # job ids whose attachment was removed
    leftovers: list[str] = field(default_factory=list)     # kernel objects removed that the DB did not know
    repaired: list[str] = field(default_factory=list)      # missing firewall rules/bridges put back
