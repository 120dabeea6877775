"""Address plans: which slots a network has, and what addresses a slot stands for.

A *slot* is what the database allocates (unique per network):

- an isolated pool is cut into blocks of ``/30`` (network, host end, job,
  broadcast: slot ``i`` gives the host ``base + 4i + 1`` and the job
  ``base + 4i + 2``) or ``/31`` (RFC 3021 point-to-point: host ``base + 2i``,
  job ``base + 2i + 1``, twice as many jobs per pool);
- a bridge network gives one host address per slot: ``.1`` is the gateway on
  the bridge, slots run from ``.2`` to the last address before broadcast.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

__all__ = ["Plan", "plan"]

Plan = tuple[range, Callable[[int], tuple[str, int, str]]]  # slots, slot -> (ip, prefixlen, gateway)


def plan(kind: str, cidr: str, slot_bits: int) -> Plan:
    net = ipaddress.IPv4Network(cidr)
    if kind == "isolated":
        size = 1 << (32 - slot_bits)
        base = int(net.network_address)
        offset = 1 if slot_bits == 30 else 0

        def block(slot: int) -> tuple[str, int, str]:
            gateway = base + slot * size + offset
            return str(ipaddress.IPv4Address(gateway + 1)), slot_bits, str(ipaddress.IPv4Address(gateway))

        return range(net.num_addresses // size), block

    def host(slot: int) -> tuple[str, int, str]:
        return str(net[slot]), net.prefixlen, str(net[1])

    return range(2, net.num_addresses - 1), host
