"""Housekeeping: ``capsa prune`` and the retention policy (docs/adr/0015-restart-policies-and-retention.md).

What goes: ended jobs (each through :meth:`JobService.remove`, so its row, log, ``/work`` and whatever
it still holds go with it) and finished state-machine runs (:meth:`Engine.prune_history`, which keeps
the newest run per resource and runs other components still reference). What stays: live jobs,
jobs whose restart is due, and jobs of a workflow that has not ended.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from capsa.errors import CapsaError, InvalidArgument
from capsa.jobs.model import JobState

if TYPE_CHECKING:
    from capsa.fsm import Engine
    from capsa.jobs.service import JobService

__all__ = ["Housekeeper", "PruneResult", "RetentionPolicy", "parse_state_filter"]

log = logging.getLogger("capsa.housekeeping")

ENDED_STATES = tuple(s.value for s in JobState if s.ended)


@dataclass
class PruneResult:
    jobs: list[str] = field(default_factory=list)   # ids of the jobs removed (or that would be)
    bytes_freed: int = 0                            # their directories: logs, /work, root
    fsm_runs: int = 0                               # finished runs deleted (0 on a dry run)


def parse_state_filter(states: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Upper-cased ended states; a live state is refused (prune never touches a live job)."""
    out = tuple(dict.fromkeys(s.strip().upper() for s in states if s.strip()))
    bad = [s for s in out if s not in ENDED_STATES]
    if bad:
        raise InvalidArgument(f"cannot prune jobs in state {', '.join(bad)}: give ended states"
                              f" ({', '.join(ENDED_STATES)})")
    return out


def _dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


class Housekeeper:
    def __init__(self, jobs: JobService, engine: Engine | None) -> None:
        self.jobs = jobs
        self.engine = engine

    def select_jobs(self, *, older_than_s: float, states: tuple[str, ...] = (), now_ns: int | None = None) -> list[str]:
        """Ended jobs that ended at least ``older_than_s`` ago, oldest first."""
        cutoff = (time.time_ns() if now_ns is None else now_ns) - int(older_than_s * 1e9)
        wanted = states or ENDED_STATES
        db = self.jobs.db
        has_workflows = db.query_one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'workflows'")
        # A workflow that has not ended still reads its jobs' outcomes.
        workflow = (" AND (workflow_id IS NULL OR NOT EXISTS (SELECT 1 FROM workflows w"
                    " WHERE w.id = jobs.workflow_id AND w.ended_ns = 0))") if has_workflows else ""
        rows = db.query(
            f"SELECT id FROM jobs WHERE state IN ({','.join('?' * len(wanted))}) AND ended_ns <= ?"
            " AND id NOT IN (SELECT job_id FROM job_restarts WHERE active = 1 AND next_ns > 0)"
            f"{workflow} ORDER BY ended_ns, id", (*wanted, cutoff))
        return [str(r["id"]) for r in rows]

    def prune(self, *, older_than_s: float = 0.0, states: tuple[str, ...] = (), fsm_older_than_s: float | None = None,
              dry_run: bool = False) -> PruneResult:
        """Remove what :meth:`select_jobs` picks, and finished fsm runs older than ``fsm_older_than_s`` (None: none)."""
        result = PruneResult()
        for job_id in self.select_jobs(older_than_s=older_than_s, states=states):
            size = _dir_bytes(self.jobs.jobs_dir / job_id)
            if not dry_run:
                try:
                    self.jobs.remove(job_id)
                except CapsaError as exc:   # restarted or removed meanwhile: the next prune sees it
                    log.info("prune: job %s kept (%s)", job_id, exc)
                    continue
            result.jobs.append(job_id)
            result.bytes_freed += size
        if self.engine is not None and not dry_run and fsm_older_than_s is not None:
            result.fsm_runs = self.engine.prune_history(finished_before=time.time() - fsm_older_than_s)
        return result


class RetentionPolicy:
    """server.yaml ``retention``: prune every ``interval_s`` (a daemon thread, closed before the engine)."""

    def __init__(self, housekeeper: Housekeeper, *, interval_s: float, jobs_older_than_s: float | None,
                 fsm_runs_older_than_s: float | None) -> None:
        self.housekeeper = housekeeper
        self.interval_s = interval_s
        self.jobs_older_than_s = jobs_older_than_s
        self.fsm_runs_older_than_s = fsm_runs_older_than_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="capsa-retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def run_once(self) -> PruneResult:
        if self.jobs_older_than_s is not None:
            result = self.housekeeper.prune(older_than_s=self.jobs_older_than_s,
                                            fsm_older_than_s=self.fsm_runs_older_than_s)
        elif self.fsm_runs_older_than_s is not None and self.housekeeper.engine is not None:
            result = PruneResult(fsm_runs=self.housekeeper.engine.prune_history(
                finished_before=time.time() - self.fsm_runs_older_than_s))
        else:
            result = PruneResult()
        if result.jobs or result.fsm_runs:
            log.info("retention: removed %d job(s) (%d bytes) and %d state-machine run(s)",
                     len(result.jobs), result.bytes_freed, result.fsm_runs)
        return result

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:   # a busy or full database: the next round tries again
                log.exception("retention round failed")
