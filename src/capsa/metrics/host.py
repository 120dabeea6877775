"""The node's own usage, read from /proc and statvfs (no subprocesses, no namespaces)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from capsa.metrics.model import HostSample

__all__ = ["HostReader", "parse_cpu_line", "parse_meminfo"]


def parse_cpu_line(proc_stat: str) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat's ``cpu`` line.

    Idle is idle + iowait; guest time is already counted in user, so only the first
    eight fields (user nice system idle iowait irq softirq steal) are summed.
    """
    for line in proc_stat.splitlines():
        if line.startswith("cpu "):
            values = [int(x) for x in line.split()[1:9]]
            values += [0] * (8 - len(values))
            total = sum(values)
            return total - values[3] - values[4], total
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as bytes per key."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return out


class HostReader:
    """Samples the host; CPU percent is over the time since the previous sample (since boot for the first)."""

    def __init__(self, disk_path: Path, proc: Path = Path("/proc")) -> None:
        self.disk_path = Path(disk_path)
        self.proc = Path(proc)
        self._prev: tuple[int, int] | None = None

    def sample(self) -> HostSample:
        busy, total = parse_cpu_line((self.proc / "stat").read_text())
        prev = self._prev
        self._prev = (busy, total)
        if prev is not None and total > prev[1]:
            percent = 100.0 * (busy - prev[0]) / (total - prev[1])
        else:
            percent = 100.0 * busy / total if total else 0.0
        mem = parse_meminfo((self.proc / "meminfo").read_text())
        available = mem.get("MemAvailable", mem.get("MemFree", 0))
        st = os.statvfs(self.disk_path)
        load = (self.proc / "loadavg").read_text().split()
        uptime = float((self.proc / "uptime").read_text().split()[0])
        return HostSample(
            timestamp_ns=time.time_ns(),
            cpu_percent=max(0.0, min(100.0, percent)),
            cpu_count=os.cpu_count() or 1,
            memory_total=mem.get("MemTotal", 0),
            memory_available=available,
            disk_path=str(self.disk_path),
            disk_total=st.f_blocks * st.f_frsize,
            disk_free=st.f_bavail * st.f_frsize,
            load1=float(load[0]),
            load5=float(load[1]),
            load15=float(load[2]),
            uptime_s=uptime,
        )
