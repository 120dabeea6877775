"""Helpers for the network tests: processes inside a namespace, host servers, kernel listings."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from capsa.networks import NetworkManager
from capsa.networks import _links as links

__all__ = ["Leftovers", "host_server", "in_netns", "leftovers", "netns_server", "proc_mounts_under"]

# A job stand-in: connect to host:port, send a line, print what came back (or the error) as JSON.
_CLIENT = r"""
import json, socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"ping\n")
        print(json.dumps({"ok": True, "reply": s.makefile().readline().strip(), "local": s.getsockname()[0]}))
except OSError as exc:
    print(json.dumps({"ok": False, "errno": exc.errno, "error": str(exc)}))
"""

# A job stand-in serving one connection at a time on ip:port; answers "pong from <ip>".
_SERVER = r"""
import socket, sys
ip = sys.argv[1]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((ip, 0))
srv.listen(8)
print(srv.getsockname()[1], flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        conn.makefile().readline()
        conn.sendall(f"pong from {ip}\n".encode())
"""


def in_netns(netns_path: str, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run a command as a process inside the namespace (like ``ip netns exec``)."""
    return subprocess.run(["nsenter", f"--net={netns_path}", *argv], capture_output=True, text=True,
                          timeout=timeout, check=False)


def connect_from(netns_path: str, host: str, port: int, timeout: float = 2.0) -> dict[str, object]:
    out = in_netns(netns_path, sys.executable, "-c", _CLIENT, host, str(port), str(timeout))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@contextmanager
def host_server(ip: str) -> Iterator[int]:
    """A TCP server on the host, bound to ``ip`` (the veth's host end or the bridge gateway)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ip, 0))
    srv.listen(16)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, peer = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    conn.makefile().readline()
                    conn.sendall(f"hello {peer[0]}\n".encode())
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        srv.close()


@contextmanager
def netns_server(netns_path: str, ip: str) -> Iterator[int]:
    """A TCP server running as a process inside a job's namespace; yields its port."""
    proc = subprocess.Popen(["nsenter", f"--net={netns_path}", sys.executable, "-c", _SERVER, ip],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f"server did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
        yield int(line)
    finally:
        proc.kill()
        proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def proc_mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path))]


@dataclass
class Leftovers:
    mounts: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    chains: list[str] = field(default_factory=list)
    netns_files: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.mounts or self.links or self.chains or self.netns_files)


def leftovers(mgr: NetworkManager, tmp_path: Path) -> Leftovers:
    """What of this manager's instance is still on the host, found by listing the kernel's state."""
    cfg = mgr.config
    found = Leftovers(mounts=proc_mounts_under(tmp_path))
    names = links.link_names()
    found.links = [link.name for link in links.owned_links(f"capsa:{mgr.instance}:")]
    found.links += [n for n in names if n == cfg.bridge_name]
    for table, chain in (("filter", f"{cfg.chain_prefix}-FORWARD"), ("nat", f"{cfg.chain_prefix}-POSTROUTING"),
                         ("nat", f"{cfg.chain_prefix}-PORTS")):
        if subprocess.run(["iptables", "-w", "5", "-t", table, "-S", chain], capture_output=True).returncode == 0:
            found.chains.append(f"{table}/{chain}")
        jumps = subprocess.run(["iptables", "-w", "5", "-t", table, "-S"], capture_output=True, text=True).stdout
        if f"-j {chain}" in jumps:
            found.chains.append(f"{table}/jump to {chain}")
    if cfg.netns_dir.exists():
        found.netns_files = sorted(p.name for p in cfg.netns_dir.iterdir())
    return found
