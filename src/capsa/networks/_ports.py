"""Published ports: ``-p [HOSTIP:]HOSTPORT:JOBPORT[/tcp|/udp]``, their rows, their rules, who holds a port.

A published port is a DNAT rule in ``<P>-PORTS`` (entered from nat PREROUTING and OUTPUT for
packets addressed to this host), an ACCEPT in ``<P>-FORWARD`` for the DNAT'd flow (ahead of the
network's guard, which drops unsolicited traffic into a network), and, for loopback host
addresses, a MASQUERADE so the job answers the host rather than its own 127.0.0.1 (the kernel
routes 127/8 off the loopback device only with ``route_localnet=1`` on the job's device).
No userland proxy: see docs/adr/0014-copy-and-published-ports.md.

Rows (``network_ports``) are written before the rules and deleted after them, with a unique
(proto, host_ip, host_port): two jobs can never both be told they own a port.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from capsa.errors import Conflict, InvalidArgument
from capsa.networks._firewall import RuleSet
from capsa.state import Database

__all__ = ["PortSpec", "PortStore", "host_holder", "parse_port", "port_rules", "set_route_localnet"]

DEFAULT_HOST_IP = "127.0.0.1"
_SPEC = re.compile(r"^(?:(?P<ip>[0-9.]+):)?(?P<host>[0-9]+):(?P<job>[0-9]+)(?:/(?P<proto>tcp|udp))?$")

MIGRATIONS = [
    """
    CREATE TABLE network_ports (
        job_id TEXT NOT NULL,
        proto TEXT NOT NULL,
        host_ip TEXT NOT NULL,
        host_port INTEGER NOT NULL,
        job_port INTEGER NOT NULL,
        UNIQUE (proto, host_ip, host_port)
    );
    CREATE INDEX network_ports_job ON network_ports(job_id);
    """,
]


@dataclass(frozen=True)
class PortSpec:
    proto: str
    host_ip: str
    host_port: int
    job_port: int

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}->{self.job_port}/{self.proto}"


def parse_port(spec: str) -> PortSpec:
    m = _SPEC.match(spec.strip())
    if m is None:
        raise InvalidArgument(f"-p {spec!r}: expected [HOSTIP:]HOSTPORT:JOBPORT[/tcp|/udp],"
                              " e.g. 8080:80 or 0.0.0.0:8080:80/udp")
    ip = m["ip"] or DEFAULT_HOST_IP
    try:
        addr = ipaddress.IPv4Address(ip)
    except ValueError:
        raise InvalidArgument(f"-p {spec!r}: {ip!r} is not an IPv4 address") from None
    if addr.is_multicast or (not addr.is_unspecified and str(addr) == "255.255.255.255"):
        raise InvalidArgument(f"-p {spec!r}: {ip} cannot receive connections")
    host_port, job_port = int(m["host"]), int(m["job"])
    for what, port in (("host", host_port), ("job", job_port)):
        if not 1 <= port <= 65535:
            raise InvalidArgument(f"-p {spec!r}: the {what} port must be between 1 and 65535")
    return PortSpec(m["proto"] or "tcp", str(addr), host_port, job_port)


def parse_ports(specs: tuple[str, ...] | list[str]) -> list[PortSpec]:
    ports = [parse_port(s) for s in specs]
    for i, a in enumerate(ports):
        for b in ports[:i]:
            if _overlap(a, b):
                raise InvalidArgument(f"-p: {a} and {b} publish the same host port twice")
    return ports


def _overlap(a: PortSpec, b: PortSpec) -> bool:
    return (a.proto, a.host_port) == (b.proto, b.host_port) and (
        a.host_ip == b.host_ip or "0.0.0.0" in (a.host_ip, b.host_ip))


class PortStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("network_ports", MIGRATIONS)

    def reserve(self, job_id: str, ports: list[PortSpec]) -> None:
        """Insert all of the job's rows or none; Conflict names the job holding a port."""
        with self.db.tx() as conn:
            for p in ports:
                rows = conn.execute("SELECT job_id, host_ip FROM network_ports WHERE proto = ? AND host_port = ?",
                                    (p.proto, p.host_port)).fetchall()
                for row in rows:
                    if "0.0.0.0" in (row["host_ip"], p.host_ip) or row["host_ip"] == p.host_ip:
                        raise Conflict(f"-p {p}: {row['host_ip']}:{p.host_port}/{p.proto} is already published by"
                                       f" job {row['job_id']}")
                try:
                    conn.execute("INSERT INTO network_ports(job_id, proto, host_ip, host_port, job_port)"
                                 " VALUES(?, ?, ?, ?, ?)", (job_id, p.proto, p.host_ip, p.host_port, p.job_port))
                except sqlite3.IntegrityError:
                    raise Conflict(f"-p {p}: the port is already published by another job") from None

    def of(self, job_id: str) -> list[PortSpec]:
        return [_spec(r) for r in self.db.query(
            "SELECT * FROM network_ports WHERE job_id = ? ORDER BY rowid", (job_id,))]

    def all(self) -> dict[str, list[PortSpec]]:
        out: dict[str, list[PortSpec]] = {}
        for r in self.db.query("SELECT * FROM network_ports ORDER BY rowid"):
            out.setdefault(r["job_id"], []).append(_spec(r))
        return out

    def delete(self, job_id: str) -> None:
        self.db.execute("DELETE FROM network_ports WHERE job_id = ?", (job_id,))


def _spec(row: sqlite3.Row) -> PortSpec:
    return PortSpec(row["proto"], row["host_ip"], int(row["host_port"]), int(row["job_port"]))


def port_rules(ports: list[PortSpec], job_ip: str, device: str) -> RuleSet:
    rules = RuleSet()
    for p in ports:
        dest = [] if p.host_ip == "0.0.0.0" else ["-d", f"{p.host_ip}/32"]
        if p.host_ip != "0.0.0.0" and ipaddress.IPv4Address(p.host_ip).is_loopback:
            # Only this host's own connections: a LAN peer that routes a crafted packet for 127.0.0.1 to
            # us must not reach the job (moby/moby#41872, where Docker's loopback DNAT matched any interface).
            dest += ["-m", "addrtype", "--src-type", "LOCAL"]
        rules.dnat.append([*dest, "-p", p.proto, "-m", p.proto, "--dport", str(p.host_port),
                           "-j", "DNAT", "--to-destination", f"{job_ip}:{p.job_port}"])
        flow = ["-d", f"{job_ip}/32", "-o", device, "-p", p.proto, "-m", p.proto, "--dport", str(p.job_port)]
        rules.forward_top.append([*flow, "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"])
        if p.host_ip == "0.0.0.0" or ipaddress.IPv4Address(p.host_ip).is_loopback:
            rules.nat.append(["-s", "127.0.0.0/8", *flow, "-j", "MASQUERADE"])
    return rules


def set_route_localnet(device: str) -> None:
    """Let 127/8 sources leave through ``device`` (to the job) after the OUTPUT DNAT."""
    Path(f"/proc/sys/net/ipv4/conf/{device}/route_localnet").write_text("1\n")


# -- who holds a port on the host ------------------------------------------------------------
def _listeners(proto: str) -> dict[int, list[tuple[str, int]]]:
    """inode -> [(ip, port)] of listening tcp / bound udp sockets (IPv4 and IPv6)."""
    found: dict[int, list[tuple[str, int]]] = {}
    for family in ("", "6"):
        try:
            lines = Path(f"/proc/net/{proto}{family}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if proto == "tcp" and f[3] != "0A":   # LISTEN
                continue
            addr, port = f[1].split(":")
            ip = _decode_ip(addr)
            found.setdefault(int(f[9]), []).append((ip, int(port, 16)))
    return found


def _decode_ip(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    v6 = ipaddress.IPv6Address(words)
    return str(v6.ipv4_mapped) if v6.ipv4_mapped else ("0.0.0.0" if v6.is_unspecified else str(v6))


def host_holder(p: PortSpec) -> str | None:
    """'a host process (pid N: cmd)' when a socket in this network namespace holds the port, else None."""
    for inode, addrs in _listeners(p.proto).items():
        for ip, port in addrs:
            if port == p.host_port and (ip == p.host_ip or "0.0.0.0" in (ip, p.host_ip)):
                return "a host process" + _owner(inode)
    return None


def _owner(inode: int) -> str:
    target = f"socket:[{inode}]"
    with contextlib.suppress(OSError):
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
                            return f" (pid {pid}: {cmd.decode(errors='replace')[:80]})"
    return ""
