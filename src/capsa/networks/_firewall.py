"""capsa's firewall rules, through the ``iptables`` command line, and the ip_forward switch.

Why the iptables CLI: it is on every distribution, it talks to whichever
backend the distribution chose (nf_tables through ``iptables-nft`` here, or
legacy x_tables), and its rules coexist with Docker's, firewalld's or an
admin's; pyroute2's nftables support would tie capsa to nf_tables and nftables
may be absent. Several rules go in one ``iptables-restore --noflush`` call
(one exec, applied atomically).

Layout (``<P>`` is the configured chain prefix, default ``CAPSA``)::

    filter FORWARD      -> -j <P>-FORWARD        (inserted first)
    nat    POSTROUTING  -> -j <P>-POSTROUTING    (inserted first)
    nat    PREROUTING   -> -m addrtype --dst-type LOCAL -j <P>-PORTS   (published ports: DNAT)
    nat    OUTPUT       -> -m addrtype --dst-type LOCAL -j <P>-PORTS   (the same, for the host's own
                                                                        connections, 127.0.0.1 included)

In ``<P>-FORWARD`` the *guards* (drop what enters a capsa network unsolicited)
are inserted at the top and the *allows* appended at the bottom, so a guard of
one network always precedes the allows of every other network: jobs on one
network (or in isolated mode, each job) cannot open connections to another.
Every rule carries the comment ``capsa:<instance>:<job|net>:<name>`` so its
owner can remove exactly its own rules, and reconcile can find strays.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from capsa.errors import FailedPrecondition, Timeout, Unsupported

__all__ = ["Firewall", "RuleSet", "read_ip_forward", "write_ip_forward"]

_IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
_COMMENT_RE = re.compile(r'--comment\s+"?([^"\s]+)"?')
_ESTABLISHED = ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"]
_UNSOLICITED = ["-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED"]
# One process, one writer: iptables-nft retries on its own, but x_tables' lock is per host.
_LOCK = threading.Lock()


def read_ip_forward() -> str:
    return _IP_FORWARD.read_text().strip()


def write_ip_forward(value: str) -> None:
    _IP_FORWARD.write_text(value + "\n")


@dataclass
class RuleSet:
    """The rules one owner (a job or a network) needs, by position."""

    forward_top: list[list[str]] = field(default_factory=list)     # inserted at position 1, in order
    forward_bottom: list[list[str]] = field(default_factory=list)  # appended
    nat: list[list[str]] = field(default_factory=list)             # appended to <P>-POSTROUTING
    dnat: list[list[str]] = field(default_factory=list)            # appended to <P>-PORTS (nat)

    def count(self) -> tuple[int, int]:
        return len(self.forward_top) + len(self.forward_bottom), len(self.nat) + len(self.dnat)

    @classmethod
    def for_bridge(cls, bridge: str, cidr: str) -> RuleSet:
        return cls(
            # Inserted one after the other at the top: the intra-bridge accept ends up first.
            forward_top=[["-o", bridge, *_UNSOLICITED, "-j", "DROP"],
                         ["-i", bridge, "-o", bridge, "-j", "ACCEPT"]],
            forward_bottom=[["-o", bridge, *_ESTABLISHED, "-j", "ACCEPT"],
                            ["-i", bridge, "-j", "ACCEPT"]],
            nat=[["-s", cidr, "!", "-o", bridge, "-j", "MASQUERADE"]],
        )

    @classmethod
    def for_isolated(cls, veth: str, subnet: str) -> RuleSet:
        return cls(
            forward_top=[["-o", veth, *_UNSOLICITED, "-j", "DROP"]],
            forward_bottom=[["-o", veth, *_ESTABLISHED, "-j", "ACCEPT"],
                            ["-i", veth, "-j", "ACCEPT"]],
            nat=[["-s", subnet, "!", "-o", veth, "-j", "MASQUERADE"]],
        )


class Firewall:
    def __init__(self, iptables: str, chain_prefix: str, instance: str) -> None:
        self.iptables = iptables
        self.restore = iptables + "-restore"
        self.forward = f"{chain_prefix}-FORWARD"
        self.postrouting = f"{chain_prefix}-POSTROUTING"
        self.ports = f"{chain_prefix}-PORTS"
        self.instance = instance

    def tag(self, kind: str, name: str) -> str:
        return f"capsa:{self.instance}:{kind}:{name}"

    # -- chains ------------------------------------------------------------------------
    def _chains(self) -> tuple[tuple[str, str, str], ...]:
        return (("filter", self.forward, "FORWARD"), ("nat", self.postrouting, "POSTROUTING"),
                ("nat", self.ports, "PREROUTING"))

    def _jumps(self, table: str, chain: str) -> list[tuple[str, list[str]]]:
        """(parent chain, match) of each jump to ``chain``: the ports chain is entered from two parents,
        only for packets addressed to this host (as Docker's DOCKER chain is)."""
        if chain == self.ports:
            local = ["-m", "addrtype", "--dst-type", "LOCAL"]
            return [("PREROUTING", local), ("OUTPUT", local)]
        return [(parent, []) for t, c, parent in self._chains() if (t, c) == (table, chain)]

    def ensure_chains(self) -> None:
        """Create the chains and their jumps if missing (idempotent, safe against a concurrent creator)."""
        with _LOCK:
            for table, chain, _ in self._chains():
                if not self._ok(["-t", table, "-S", chain]):
                    out = self._run_raw(["-t", table, "-N", chain])
                    if out.returncode != 0 and "exists" not in out.stderr:
                        raise _failure([self.iptables, "-t", table, "-N", chain], out)
                for parent, match in self._jumps(table, chain):
                    if not self._ok(["-t", table, "-C", parent, *match, "-j", chain]):
                        self._run(["-t", table, "-I", parent, "1", *match, "-j", chain])

    def chains_exist(self) -> bool:
        with _LOCK:
            return any(self._ok(["-t", table, "-S", chain]) for table, chain, _ in self._chains())

    def remove_chains_if_empty(self) -> bool:
        """Drop the chains and their jumps when no rule (of any capsa instance) is left. True if gone."""
        with _LOCK:
            for table, chain, _ in self._chains():
                if self._ok(["-t", table, "-S", chain]) and self._rules(table, chain):
                    return False
            gone = True
            for table, chain, _ in self._chains():
                jumps = self._jumps(table, chain)
                for parent, match in jumps:
                    while self._ok(["-t", table, "-C", parent, *match, "-j", chain]):
                        self._run(["-t", table, "-D", parent, *match, "-j", chain])
                if self._ok(["-t", table, "-S", chain]) and not self._ok(["-t", table, "-X", chain]):
                    # Another instance sharing the prefix added a rule meanwhile: keep it reachable.
                    for parent, match in jumps:
                        self._run(["-t", table, "-I", parent, "1", *match, "-j", chain])
                    gone = False
            return gone

    # -- rules -------------------------------------------------------------------------
    def add(self, tag: str, rules: RuleSet, *, replace: bool = False) -> None:
        """Install ``rules`` under ``tag`` in one atomic batch; ``replace`` first drops any copy present."""
        if replace:
            self.remove(tag)
        lines = ["*filter"]
        lines += [" ".join(["-I", self.forward, "1", *r, *self._comment(tag)]) for r in rules.forward_top]
        lines += [" ".join(["-A", self.forward, *r, *self._comment(tag)]) for r in rules.forward_bottom]
        lines += ["COMMIT", "*nat"]
        lines += [" ".join(["-A", self.postrouting, *r, *self._comment(tag)]) for r in rules.nat]
        lines += [" ".join(["-A", self.ports, *r, *self._comment(tag)]) for r in rules.dnat]
        lines += ["COMMIT", ""]
        with _LOCK:
            self._restore("\n".join(lines))

    def delete(self, tag: str, rules: RuleSet) -> None:
        """Remove exactly ``rules`` (one exec); if some are missing, whatever carries ``tag``."""
        lines = ["*filter"]
        lines += [" ".join(["-D", self.forward, *r, *self._comment(tag)])
                  for r in [*rules.forward_top, *rules.forward_bottom]]
        lines += ["COMMIT", "*nat"]
        lines += [" ".join(["-D", self.postrouting, *r, *self._comment(tag)]) for r in rules.nat]
        lines += [" ".join(["-D", self.ports, *r, *self._comment(tag)]) for r in rules.dnat]
        lines += ["COMMIT", ""]
        try:
            with _LOCK:
                self._restore("\n".join(lines))
        except FailedPrecondition:
            self.remove(tag)

    @staticmethod
    def _comment(tag: str) -> list[str]:
        return ["-m", "comment", "--comment", tag]

    def rules(self, tag: str | None = None) -> dict[str, list[str]]:
        """``{"filter": [...], "nat": [...]}``: the ``-A`` lines of our chains, optionally of one tag."""
        found: dict[str, list[str]] = {"filter": [], "nat": []}
        with _LOCK:
            for table, chain, _ in self._chains():
                found[table] += [r for r in self._rules(table, chain) if tag is None or _tag_of(r) == tag]
        return found

    def tags(self) -> set[str]:
        """Tags of this instance present in the chains."""
        prefix = f"capsa:{self.instance}:"
        found = set()
        for lines in self.rules().values():
            for line in lines:
                tag = _tag_of(line)
                if tag and tag.startswith(prefix):
                    found.add(tag)
        return found

    def has(self, tag: str, rules: RuleSet) -> bool:
        present = self.rules(tag)
        return (len(present["filter"]), len(present["nat"])) == rules.count()

    def remove(self, tag: str) -> int:
        return self.remove_matching(lambda t: t == tag)

    def remove_matching(self, predicate: Callable[[str], bool]) -> int:
        """Delete every rule whose tag satisfies ``predicate``; returns how many."""
        with _LOCK:
            batch: list[str] = []
            removed = 0
            for table in ("filter", "nat"):
                doomed = [r for t, chain, _ in self._chains() if t == table
                          for r in self._rules(table, chain) if (tg := _tag_of(r)) and predicate(tg)]
                if doomed:
                    batch += [f"*{table}", *("-D" + line[2:] for line in doomed), "COMMIT"]
                    removed += len(doomed)
            if batch:
                self._restore("\n".join([*batch, ""]))
            return removed

    # -- plumbing ----------------------------------------------------------------------
    def _rules(self, table: str, chain: str) -> list[str]:
        out = self._run_raw(["-t", table, "-S", chain])
        if out.returncode != 0:
            return []
        return [line for line in out.stdout.splitlines() if line.startswith("-A ")]

    def _ok(self, args: Sequence[str]) -> bool:
        return self._run_raw(args).returncode == 0

    def _run(self, args: Sequence[str]) -> str:
        out = self._run_raw(args)
        if out.returncode != 0:
            raise _failure([self.iptables, *args], out)
        return out.stdout

    def _run_raw(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return _exec([self.iptables, "-w", "5", *args])

    def _restore(self, text: str) -> None:
        out = _exec([self.restore, "-w", "5", "--noflush"], text)
        if out.returncode != 0:
            raise _failure([self.restore, "--noflush"], out, text)


def _exec(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError as exc:
        raise Unsupported(f"{argv[0]} is not installed; capsa needs it for isolated and bridge networks") from exc
    except subprocess.TimeoutExpired as exc:
        raise Timeout(f"{' '.join(argv)} did not finish within 30 s") from exc


def _failure(argv: Iterable[str], out: subprocess.CompletedProcess[str], batch: str = "") -> FailedPrecondition:
    message = (out.stderr or out.stdout).strip()
    return FailedPrecondition(
        f"{' '.join(argv)} failed (exit {out.returncode}): {message}",
        detail={"command": list(argv), "output": message, "batch": batch},
    )


def _tag_of(line: str) -> str | None:
    match = _COMMENT_RE.search(line)
    return match.group(1) if match else None
