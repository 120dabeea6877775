"""Typed messages between the daemon and the supervisor.

The supervisor owns the processes; the daemon keeps the promises (the jobs table).
What crosses between them is one of the dataclasses here, so neither side retypes
the other's field names or state strings.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["ExitEvent", "JobRecord", "ProcState"]


class ProcState(enum.StrEnum):
    """Where a job's process is, as the supervisor sees it (not the user-facing ``jobs.JobState``)."""

    STARTING = "starting"   # accepted; stage one/two not yet exec'd the command
    RUNNING = "running"     # the command was exec'd
    EXITED = "exited"       # reaped, output drained, exit status decided


@dataclass
class JobRecord:
    """What the supervisor knows of one job."""

    job_id: str
    pid: int = 0
    state: ProcState = ProcState.STARTING
    exit_code: int | None = None
    signal: int = 0
    reason: str = ""
    oom_killed: bool = False
    stop_requested: bool = False
    started_ns: int = 0
    exec_latency_ns: int = 0
    ended_ns: int = 0
    cgroup: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["state"] = self.state.value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["state"] = ProcState(values.get("state", ProcState.STARTING.value))
        return cls(**values)


@dataclass(frozen=True)
class ExitEvent:
    """Sent to subscribers once a job's process has exited and its output is drained."""

    job: JobRecord
