"""The supervisor: the one long-lived process that owns every running job.

It is started by the daemon (``capsa`` with ``CAPSA_ROLE=supervisor``) in its
own session so that it outlives a crash of the daemon: jobs keep running, their
output keeps being persisted, and a restarted daemon reconnects and re-adopts
them (containerd's shim, one per node instead of one per job — which is what
keeps the per-job memory cost near zero).

Responsibilities, all in one single-threaded ``selectors`` loop (:mod:`._loop`,
:mod:`._core`):
- start jobs through the zygote (a fork server exec'd as its own process);
- read every job's stdout/stderr pipe and hand the chunks to the asynchronous
  log persister (its writer threads are the only other threads);
- reap jobs (we are a child subreaper) and decide their exit status and reason;
- stop jobs: SIGTERM to every process of the job's cgroup, then SIGKILL after
  the grace period;
- answer the daemon's typed requests (:mod:`capsa.runtime.protocol`) and push
  exit events to subscribers — every write through a non-blocking queue, so a
  slow or stuck peer never stalls the loop (docs/adr/0010-supervisor-protocol.md).

Its collaborators — cgroup driver, zygote, process table, log persister — can be
injected, which is how tests drive the request handling without root.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from capsa.runtime.protocol import JobRecord
from capsa.runtime.standby import STANDBY_IDLE_S
from capsa.runtime.supervisor._core import START_TIMEOUT_S, Supervisor
from capsa.runtime.supervisor._links import Caller, Connection, HostProcesses, Processes, Zygote, ZygoteLink
from capsa.runtime.supervisor._loop import LISTEN_BACKLOG, handles

__all__ = [
    "LISTEN_BACKLOG",
    "START_TIMEOUT_S",
    "Caller",
    "Connection",
    "HostProcesses",
    "JobRecord",
    "Processes",
    "Supervisor",
    "Zygote",
    "ZygoteLink",
    "handles",
    "main",
]


def main(home: Path) -> None:
    supervisor = Supervisor(home, standby_idle_s=standby_idle_from_env())
    supervisor.start()
    supervisor.serve()


def standby_idle_from_env() -> float | None:
    """``CAPSA_STANDBY_IDLE_MS``: idle time before a standby is made (capsa.runtime.standby); 0 turns
    standbys off (each start then pays the zygote's clone, and no memory is held for the next one)."""
    raw = os.environ.get("CAPSA_STANDBY_IDLE_MS", "")
    if not raw:
        return STANDBY_IDLE_S
    try:
        ms = float(raw)
    except ValueError:
        raise SystemExit(f"capsa-supervisor: CAPSA_STANDBY_IDLE_MS={raw!r} is not a number of milliseconds") from None
    if not math.isfinite(ms) or ms < 0:
        raise SystemExit(f"capsa-supervisor: CAPSA_STANDBY_IDLE_MS={raw!r} must be >= 0 (0: no standbys)")
    return ms / 1000 if ms else None

