"""NetworkManager: network modes for jobs, named networks, address allocation, reconcile.

One attachment per job. The order of every operation is chosen for crashes:
the database row (with its address) is written *before* any kernel object is
created and deleted *after* they are all gone, so after a crash the database
always names at least everything that exists, and :meth:`reconcile` can finish
the job. Kernel objects are found again by name (netns file = job id, veth
name derived from the job id) and by the ``capsa:<instance>:`` alias/comment.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from capsa.errors import CapsaError, Conflict, FailedPrecondition, InvalidArgument, NotFound
from capsa.networks import _firewall, _ipam, _links, _netns, _ports
from capsa.networks._firewall import Firewall, RuleSet
from capsa.networks._ports import PortSpec, PortStore
from capsa.networks._store import AttachmentRow, NetworkRow, Store
from capsa.networks.model import (
    BRIDGE,
    HOST,
    ISOLATED,
    NONE,
    Attachment,
    NetStats,
    Network,
    NetworkConfig,
    ReconcileReport,
    parse_cidr,
    validate_job_id,
    validate_network_name,
)
from capsa.state import Database

__all__ = ["NetworkManager"]

_VETH_PREFIX = "capv"           # + 10 hex = 14 characters (IFNAMSIZ is 16 with the NUL)
_BRIDGE_PREFIX = "capsa-"       # + 8 hex
_IP_FORWARD_KEY = "ip_forward_restore"
_RUN_DIR = Path("/run/capsa")   # default home of each instance's pinned namespaces


class NetworkManager:
    """Owns every network namespace, veth, bridge and firewall rule capsa creates on this host."""

    def __init__(self, db: Database, *, config: NetworkConfig | None = None) -> None:
        self.config = config or NetworkConfig()
        self._store = Store(db)
        self._ports = PortStore(db)
        self.instance = self._store.instance_id()
        self.netns_dir = self.config.netns_dir or _RUN_DIR / self.instance / "netns"
        self._fw = Firewall(self.config.iptables, self.config.chain_prefix, self.instance)
        self._lock = threading.RLock()       # host-wide set-up: bridges, chains, ip_forward, create/rm
        self._ready_networks: set[str] = set()
        self._chains_ready = False
        self._mtu = self.config.mtu
        self._pool = parse_cidr(self.config.isolated_pool, "isolated_pool")
        self._sync_builtins()

    # -- named networks -------------------------------------------------------------------
    def create(self, name: str, cidr: str) -> Network:
        """A user network: its own bridge ``capsa-<hash>``; its jobs reach each other, nobody else."""
        validate_network_name(name)
        net = parse_cidr(cidr, f"network {name}")
        if not 16 <= net.prefixlen <= 29:
            raise InvalidArgument(f"network {name}: {net} must have a prefix length between /16 and /29")
        with self._lock:
            for other in self._store.networks():
                if net.overlaps(ipaddress.ip_network(other.cidr)):
                    raise Conflict(f"network {name}: {net} overlaps network {other.name!r} ({other.cidr})")
            for iface, host_net in _links.host_networks():
                if net.overlaps(host_net):
                    raise Conflict(f"network {name}: {net} overlaps {host_net} on host interface {iface}")
            bridge = _BRIDGE_PREFIX + _digest(f"{self.instance}:{name}", 8)
            if bridge in _links.link_names():
                raise Conflict(f"network {name}: interface {bridge} already exists on the host")
            row = NetworkRow(name, "bridge", str(net), 32, bridge, False, time.time_ns())
            self._store.insert_network(row)
        return self._network(row, 0)

    def list(self) -> list[Network]:
        counts = self._store.attached_counts()
        return [self._network(r, counts.get(r.name, 0)) for r in self._store.networks()]

    def get(self, name: str) -> Network:
        row = self._store.network(name)
        if row is None:
            raise NotFound(f"no network named {name!r}")
        return self._network(row, self._store.attached_count(name))

    def remove(self, name: str) -> None:
        """Remove a user network and its bridge; refused (Conflict) while jobs are attached."""
        row = self._store.network(name)
        if row is None:
            raise NotFound(f"no network named {name!r}")
        if row.builtin:
            raise InvalidArgument(f"network {name!r} is built in and cannot be removed")
        with self._lock:
            users = self._store.delete_network(name)
            if users:
                shown = ", ".join(users[:5]) + (" …" if len(users) > 5 else "")
                raise Conflict(f"network {name!r} is in use by {len(users)} job(s): {shown}")
            self._ready_networks.discard(name)
            self._fw.remove(self._fw.tag("net", name))
            if row.bridge:
                _links.delete_link(row.bridge)

    # -- attachments ----------------------------------------------------------------------
    def attach(self, job_id: str, mode_or_name: str) -> Attachment:
        """Give ``job_id`` its network; call before the job starts, then join ``netns_path``.

        ``host`` records nothing and returns no namespace. Raises AlreadyExists if
        the job is attached already, NotFound for an unknown network name.
        """
        validate_job_id(job_id)
        if mode_or_name == HOST:
            return Attachment(job_id=job_id, mode=HOST)
        netns_path = self.netns_dir / job_id
        if mode_or_name == NONE:
            row = self._store.reserve(job_id, NONE, str(netns_path))
            net = None
        else:
            net = self._store.network(mode_or_name)
            if net is None:
                raise NotFound(f"no network named {mode_or_name!r} (modes: host, none, isolated, bridge)")
            slots, address_of = _ipam.plan(net.kind, net.cidr, net.slot_bits)
            row = self._store.reserve(job_id, ISOLATED if net.kind == "isolated" else BRIDGE, str(netns_path),
                                      network=net.name, slots=slots, address_of=address_of,
                                      veth_host=self._veth_name(job_id))
        try:
            self._provision(row, net)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                self._release(row.job_id, row)
            if isinstance(exc, CapsaError | KeyboardInterrupt):
                raise
            raise FailedPrecondition(f"attaching job {job_id} to {mode_or_name}: {exc}") from exc
        self._store.mark_ready(job_id)
        return _attachment(row)

    def detach(self, job_id: str) -> bool:
        """Remove the job's veth, namespace and rules and free its address. Idempotent; False if nothing was there."""
        validate_job_id(job_id)
        return self._release(job_id, self._store.attachment(job_id))

    # -- published ports --------------------------------------------------------------------
    def publish(self, job_id: str, ports: list[PortSpec]) -> None:
        """DNAT host ports to the attached job; all or nothing. Conflict names who holds a port."""
        if not ports:
            return
        row = self._store.attachment(job_id)
        if row is None or row.mode not in (ISOLATED, BRIDGE) or not row.ip:
            raise InvalidArgument("-p: published ports need a bridge, isolated or named network")
        for p in ports:
            holder = _ports.host_holder(p)
            if holder is not None:
                raise Conflict(f"-p {p}: host port {p.host_ip}:{p.host_port}/{p.proto} is in use by {holder}")
        self._ports.reserve(job_id, ports)   # rows first: after a crash they name every rule that may exist
        tag = self._fw.tag("port", job_id)
        try:
            self._install_ports(row, ports, replace=False)
        except BaseException:
            with contextlib.suppress(Exception):
                self._fw.remove(tag)
            self._ports.delete(job_id)
            raise

    def published(self, job_id: str | None = None) -> dict[str, list[PortSpec]]:
        """job id -> its published ports (jobs that publish none are absent)."""
        if job_id is not None:
            ports = self._ports.of(job_id)
            return {job_id: ports} if ports else {}
        return self._ports.all()

    def _install_ports(self, row: AttachmentRow, ports: list[PortSpec], *, replace: bool) -> None:
        if row.mode == ISOLATED:
            device = row.veth_host or ""
        else:
            net = self._store.network(row.network or "")
            device = (net.bridge if net else None) or ""
        assert device and row.ip
        if any(p.host_ip == "0.0.0.0" or p.host_ip.startswith("127.") for p in ports):
            _ports.set_route_localnet(device)
        self._add_rules(self._fw.tag("port", row.job_id), _ports.port_rules(ports, row.ip, device), replace=replace)

    def _unpublish(self, job_id: str) -> None:
        if self._ports.of(job_id):
            self._fw.remove(self._fw.tag("port", job_id))   # rules first, rows last (see publish)
            self._ports.delete(job_id)

    def attachment(self, job_id: str) -> Attachment:
        row = self._store.attachment(job_id)
        if row is None:
            raise NotFound(f"job {job_id} has no network attachment (host mode, or not attached)")
        return _attachment(row)

    def attachments(self) -> list[Attachment]:
        return [_attachment(r) for r in self._store.attachments()]

    def network_stats(self, job_id: str) -> NetStats | None:
        """rx/tx counters inside the job's namespace; None when it has none (host mode)."""
        row = self._store.attachment(job_id)
        if row is None:
            return None
        if not _netns.is_netns(row.netns_path):
            raise NotFound(f"network namespace of job {job_id} is gone ({row.netns_path})")
        return _links.read_stats(row.netns_path)  # type: ignore[arg-type]

    # -- recovery ----------------------------------------------------------------------------
    def reconcile(self, running_job_ids: Iterable[str]) -> ReconcileReport:
        """After a daemon restart: drop what belongs to jobs that are gone, repair what the others need."""
        running = set(running_job_ids)
        report = ReconcileReport()
        for row in self._store.attachments():
            if row.job_id in running:
                report.kept.append(row.job_id)
            else:
                self._release(row.job_id, row)
                report.detached.append(row.job_id)
        kept_rows = [r for r in self._store.attachments() if r.job_id in running]
        kept = {r.job_id for r in kept_rows}
        for job_id in set(self._ports.all()) - kept:   # rows whose attachment is gone (crash in between)
            self._unpublish(job_id)
        self._remove_leftovers(kept, report)
        with self._lock:
            self._chains_ready = False
            self._ready_networks.clear()
        for row in kept_rows:
            if row.mode == NONE:
                continue
            net = self._store.network(row.network or "")
            if net is not None:
                self._prepare_host(net, report)
            if row.mode == ISOLATED:
                rules = self._isolated_rules(row)
                tag = self._fw.tag("job", row.job_id)
                if not self._fw.has(tag, rules):
                    self._fw.add(tag, rules, replace=True)
                    report.repaired.append(f"rules of job {row.job_id}")
            ports = self._ports.of(row.job_id)
            if ports:
                # Re-installed every time: their ACCEPTs must sit above guards that may just have been re-added.
                self._install_ports(row, ports, replace=True)
        return report

    def teardown(self) -> bool:
        """Remove every bridge and rule of this instance when no job is attached. False (no-op) otherwise.

        The chains go when no capsa rule of any instance is left; ip_forward is
        restored when capsa changed it and no capsa interface remains on the host.
        """
        with self._lock:
            if self._store.attachments():
                return False
            for link in _links.owned_links(f"capsa:{self.instance}:"):
                _links.delete_link(link.name)
            self._fw.remove_matching(lambda tag: tag.startswith(f"capsa:{self.instance}:"))
            chains_gone = self._fw.remove_chains_if_empty()
            original = self._store.get_state(_IP_FORWARD_KEY)
            if original is not None and chains_gone and not _links.owned_links("capsa:"):
                _firewall.write_ip_forward(original)
                self._store.set_state(_IP_FORWARD_KEY, None)
            with contextlib.suppress(OSError):
                self.netns_dir.rmdir()
                if self.config.netns_dir is None:
                    self.netns_dir.parent.rmdir()   # /run/capsa/<instance>, when it holds nothing else
            self._chains_ready = False
            self._ready_networks.clear()
            return True

    # -- internals -----------------------------------------------------------------------------
    def _sync_builtins(self) -> None:
        builtins = (
            NetworkRow(ISOLATED, "isolated", str(self._pool), self.config.isolated_prefixlen, None, True, 0),
            NetworkRow(BRIDGE, "bridge", self.config.bridge_cidr, 32, self.config.bridge_name, True, 0),
        )
        for row in builtins:
            current = self._store.network(row.name)
            attached = self._store.attached_count(row.name)
            if current is not None and attached and (current.cidr, current.slot_bits, current.bridge) != (
                    row.cidr, row.slot_bits, row.bridge):
                raise FailedPrecondition(
                    f"the {row.name} network changed from {current.cidr} ({current.bridge or 'no bridge'}) to"
                    f" {row.cidr} ({row.bridge or 'no bridge'}) while {attached} job(s) are attached;"
                    " stop them or restore the old setting")
            previous = self._store.upsert_builtin(row)
            if previous is not None and previous.bridge and previous.bridge != row.bridge:
                _links.delete_link(previous.bridge)

    def _network(self, row: NetworkRow, attached: int) -> Network:
        return Network(name=row.name, kind=row.kind, cidr=row.cidr, bridge=row.bridge, builtin=row.builtin,
                       attached=attached, created_ns=row.created_ns)

    def _veth_name(self, job_id: str) -> str:
        return _VETH_PREFIX + _digest(f"{self.instance}:{job_id}", 10)

    def _isolated_rules(self, row: AttachmentRow) -> RuleSet:
        subnet = ipaddress.IPv4Network(f"{row.ip}/{row.prefixlen}", strict=False)
        return RuleSet.for_isolated(row.veth_host or "", str(subnet))

    def _mtu_value(self) -> int:
        if self._mtu is None:
            self._mtu = _links.default_mtu()
        return self._mtu

    def _provision(self, row: AttachmentRow, net: NetworkRow | None) -> None:
        path = self.netns_dir / row.job_id
        self.netns_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        # The row is new, so anything already named after this job is a leftover of a crash.
        _netns.remove(path)
        if row.veth_host:
            _links.delete_link(row.veth_host)
        if net is None:
            _links.setup_job(path, None)
            return
        self._prepare_host(net, None)
        assert row.ip and row.prefixlen and row.gateway and row.veth_host
        isolated = net.kind == "isolated"
        _links.setup_job(path, _links.JobAddress(
            ip=row.ip, prefixlen=row.prefixlen, gateway=row.gateway, veth_host=row.veth_host,
            alias=f"capsa:{self.instance}:job:{row.job_id}", mtu=self._mtu_value(),
            host_ip=row.gateway if isolated else None, bridge=None if isolated else net.bridge,
        ))
        if isolated:
            self._add_rules(self._fw.tag("job", row.job_id), self._isolated_rules(row))

    def _prepare_host(self, net: NetworkRow, report: ReconcileReport | None) -> None:
        """Forwarding on, chains present, and for a bridge network its bridge and rules (once per process)."""
        with self._lock:
            if self._store.network(net.name) is None:
                raise NotFound(f"network {net.name!r} was removed")
            self._enable_forwarding()
            if not self._chains_ready:
                self._fw.ensure_chains()
                self._chains_ready = True
            if net.kind != "bridge" or net.name in self._ready_networks:
                return
            cidr = ipaddress.IPv4Network(net.cidr)
            assert net.bridge
            created = _links.ensure_bridge(net.bridge, str(cidr[1]), cidr.prefixlen, self._mtu_value(),
                                           f"capsa:{self.instance}:net:{net.name}")
            tag, rules = self._fw.tag("net", net.name), RuleSet.for_bridge(net.bridge, net.cidr)
            repaired = created
            if not self._fw.has(tag, rules):
                self._add_rules(tag, rules, replace=True)
                repaired = True
            if report is not None and repaired:
                report.repaired.append(f"network {net.name}")
            self._ready_networks.add(net.name)

    def _add_rules(self, tag: str, rules: RuleSet, *, replace: bool = False) -> None:
        try:
            self._fw.add(tag, rules, replace=replace)
        except FailedPrecondition:
            # Chains removed behind our back (an admin's flush, another instance's teardown): once more.
            with self._lock:
                self._fw.ensure_chains()
                self._chains_ready = True
            self._fw.add(tag, rules, replace=replace)

    def _enable_forwarding(self) -> None:
        current = _firewall.read_ip_forward()
        if current != "1":
            if self._store.get_state(_IP_FORWARD_KEY) is None:
                self._store.set_state(_IP_FORWARD_KEY, current)
            _firewall.write_ip_forward("1")

    def _release(self, job_id: str, row: AttachmentRow | None) -> bool:
        path = row.netns_path if row else str(self.netns_dir / job_id)
        veth = row.veth_host if row else self._veth_name(job_id)
        found = row is not None
        self._unpublish(job_id)
        if row is None:
            found = bool(self._fw.remove(self._fw.tag("job", job_id))) or found
        elif row.mode == ISOLATED:
            self._fw.delete(self._fw.tag("job", job_id), self._isolated_rules(row))
        if veth:
            found = _links.delete_link(veth) or found
        found = _netns.remove(path) or found
        if row is not None:
            self._store.delete_attachment(job_id)
        return found

    def _remove_leftovers(self, kept: set[str], report: ReconcileReport) -> None:
        known_paths = {r.netns_path for r in self._store.attachments()}
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.netns_dir):
                if entry.path not in known_paths and _netns.remove(entry.path):
                    report.leftovers.append(f"netns {entry.path}")
        networks = {r.name for r in self._store.networks()}
        prefix = f"capsa:{self.instance}:"
        for link in _links.owned_links(prefix):
            kind, _, name = link.alias[len(prefix):].partition(":")
            stale = (kind == "job" and name not in kept) or (kind == "net" and name not in networks)
            if stale and _links.delete_link(link.name):
                report.leftovers.append(f"{link.kind or 'link'} {link.name} ({link.alias})")

        def stale_tag(tag: str) -> bool:
            if not tag.startswith(prefix):
                return False
            kind, _, name = tag[len(prefix):].partition(":")
            return (kind in ("job", "port") and name not in kept) or (kind == "net" and name not in networks)

        removed = self._fw.remove_matching(stale_tag) if self._fw.chains_exist() else 0
        if removed:
            report.leftovers.append(f"{removed} firewall rule(s)")


def _attachment(row: AttachmentRow) -> Attachment:
    return Attachment(
        job_id=row.job_id, mode=row.mode, network=row.network, netns_path=row.netns_path, ip=row.ip,
        prefixlen=row.prefixlen, gateway=row.gateway, veth_host=row.veth_host,
        interface=_links.JOB_IFNAME if row.veth_host else None,
    )


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]
