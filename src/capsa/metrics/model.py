"""What a metrics sample is: one job's counters at one instant, and the host's."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["HostSample", "JobSample"]


@dataclass(frozen=True)
class JobSample:
    """A job's cgroup (and netns) counters; ``None`` where the host does not report a counter."""

    job_id: str
    name: str
    timestamp_ns: int                     # wall clock
    cpu_usage_ns: int | None = None
    cpu_percent: float | None = None      # of one core since the previous sample; None for the first
    memory_current: int | None = None
    memory_peak: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    pids: int | None = None
    net_rx_bytes: int | None = None       # None: the job shares the host's network
    net_tx_bytes: int | None = None
    cpu_throttled_ns: int | None = None
    oom_kills: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSample:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class HostSample:
    timestamp_ns: int
    cpu_percent: float                    # all CPUs together: 100 = every CPU busy
    cpu_count: int
    memory_total: int
    memory_available: int
    disk_path: str
    disk_total: int
    disk_free: int
    load1: float
    load5: float
    load15: float
    uptime_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
