"""Helpers for the load suites: aio channels per role, latency percentiles, daemon thread and RSS counts."""

from __future__ import annotations

import math
import time
from pathlib import Path

import grpc
import grpc.aio

from capsa.config import load_client_config

ROLES = ("reader", "developer", "maintainer", "admin")   # one certificate (common name) each


def aio_channel(home: Path, role: str) -> grpc.aio.Channel:
    """An mTLS grpc.aio channel as ``role``; create it inside the event loop that will use it."""
    node = load_client_config(home / f"client-{role}.yaml").select(None)
    creds = grpc.ssl_channel_credentials(root_certificates=node.ca_pem.encode(), private_key=node.key_pem.encode(),
                                         certificate_chain=node.cert_pem.encode())
    return grpc.aio.secure_channel(node.address, creds, options=[("grpc.max_receive_message_length", 64 << 20)])


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def proc_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(name)


def threads_of(pid: int) -> int:
    return proc_field(pid, "Threads")


def rss_kib(pid: int) -> int:
    return proc_field(pid, "VmRSS")


def settle(probe, target, *, timeout: float = 20.0, interval: float = 0.2):   # type: ignore[no-untyped-def]
    """Poll ``probe()`` until ``target(value)`` holds; the last value either way."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not target(value) and time.monotonic() < deadline:
        time.sleep(interval)
        value = probe()
    return value
