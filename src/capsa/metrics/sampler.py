"""The sampler: one daemon thread reading every running job's cgroup counters at a fixed interval.

It runs inside the daemon, which must never fork or change namespaces
(ARCHITECTURE.md, fork safety): it only reads cgroup files through
``capsa.runtime.cgroups`` (``detect().open(job_id).stats()``) and asks an
optional ``network_stats(job_id)`` for the job's network counters.

Per running job it keeps a bounded ring of samples in memory (for ``stats
--follow``, ``top`` and Prometheus) and upserts the latest one into the
``job_metrics`` table, so ``capsa stats`` still answers for an ended job or
after a daemon restart. Rings of jobs that stopped running are dropped; their
table row goes with the job (``ON DELETE CASCADE``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from capsa.errors import CapsaError, NotFound
from capsa.metrics.host import HostReader
from capsa.metrics.model import HostSample, JobSample
from capsa.state import Database

__all__ = ["MIGRATIONS", "MetricsSampler", "NetworkStats", "RunningJobs"]

log = logging.getLogger("capsa.metrics")

RunningJobs = Callable[[], list[tuple[str, str]]]          # (job id, name) of every running job
NetworkStats = Callable[[str], Any]                         # job id -> counters, or None on the host network

MIGRATIONS = [
    """
    CREATE TABLE job_metrics (
        job_id TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
        timestamp_ns INTEGER NOT NULL,
        sample TEXT NOT NULL
    );
    """,
]


def net_counters(value: Any) -> tuple[int | None, int | None]:
    """(rx, tx) bytes from what ``network_stats`` returned: None, an object with ``rx_bytes``/``tx_bytes``,
    a mapping with those keys, or an (rx, tx) pair."""
    if value is None:
        return None, None
    if isinstance(value, dict):
        return _int(value.get("rx_bytes")), _int(value.get("tx_bytes"))
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return _int(value[0]), _int(value[1])
    return _int(getattr(value, "rx_bytes", None)), _int(getattr(value, "tx_bytes", None))


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


class MetricsSampler:
    def __init__(self, db: Database | None, running_jobs: RunningJobs, *, interval_s: float = 1.0,
                 history: int = 300, host: HostReader | None = None,
                 open_cgroup: Callable[[str], Any] | None = None,
                 network_stats: NetworkStats | None = None) -> None:
        self.db = db
        self.running_jobs = running_jobs
        self.interval_s = interval_s
        self.history_len = history
        self.host = host
        self.network_stats = network_stats
        self._open_cgroup = open_cgroup
        self._cgroups: dict[str, Any] = {}
        self._prev_cpu: dict[str, tuple[int, int]] = {}        # job -> (monotonic ns, cpu ns)
        self._rings: dict[str, deque[JobSample]] = {}
        self._host: HostSample | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._tick_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if db is not None:
            db.migrate("metrics", MIGRATIONS)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="metrics-sampler", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._cond:
            self._cond.notify_all()

    def _loop(self) -> None:
        failing = ""  # the condition being reported: logged when it starts and when it ends, not every tick
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.sample_once()
            except Exception as exc:  # a transient read or database error must not end sampling
                condition = f"{type(exc).__name__}: {exc}"
                if condition != failing:
                    log.warning("metrics sample failed (%s); retrying every %gs, logged again when it changes",
                                condition, self.interval_s, exc_info=not isinstance(exc, CapsaError))
                    failing = condition
            else:
                if failing:
                    log.info("metrics sampling works again (was: %s)", failing)
                    failing = ""
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    # -- sampling ----------------------------------------------------------------------------
    def sample_once(self) -> list[JobSample]:
        """Take one sample of every running job (and the host); returns the job samples."""
        with self._tick_lock:
            running = self.running_jobs()
            samples = [s for job_id, name in running if (s := self._sample_job(job_id, name)) is not None]
            host = None
            if self.host is not None:
                with contextlib.suppress(OSError, ValueError):
                    host = self.host.sample()
            alive = {job_id for job_id, _ in running}
            for gone in set(self._cgroups) - alive:
                self._cgroups.pop(gone, None)
            for gone in set(self._prev_cpu) - alive:
                self._prev_cpu.pop(gone, None)
            with self._cond:
                for job_id in set(self._rings) - alive:
                    del self._rings[job_id]
                for s in samples:
                    self._rings.setdefault(s.job_id, deque(maxlen=self.history_len)).append(s)
                if host is not None:
                    self._host = host
                self._cond.notify_all()
            self._persist(samples)
            return samples

    def _cgroup(self, job_id: str) -> Any:
        cg = self._cgroups.get(job_id)
        if cg is None:
            if self._open_cgroup is None:
                from capsa.runtime import cgroups

                self._open_cgroup = cgroups.detect().open
            cg = self._open_cgroup(job_id)
            self._cgroups[job_id] = cg
        return cg

    def _sample_job(self, job_id: str, name: str) -> JobSample | None:
        try:
            stats = self._cgroup(job_id).stats()
        except (CapsaError, OSError):   # not created yet, or removed as the job ended
            self._cgroups.pop(job_id, None)
            return None
        now_mono = time.monotonic_ns()
        percent = None
        if stats.cpu_usage_ns is not None:
            prev = self._prev_cpu.get(job_id)
            if prev is not None and now_mono > prev[0]:
                percent = max(0.0, 100.0 * (stats.cpu_usage_ns - prev[1]) / (now_mono - prev[0]))
            self._prev_cpu[job_id] = (now_mono, stats.cpu_usage_ns)
        rx = tx = None
        if self.network_stats is not None:
            try:
                rx, tx = net_counters(self.network_stats(job_id))
            except Exception:  # a job without a netns, or one torn down meanwhile
                rx = tx = None
        return JobSample(
            job_id=job_id, name=name, timestamp_ns=time.time_ns(), cpu_usage_ns=stats.cpu_usage_ns,
            cpu_percent=percent, memory_current=stats.memory_current, memory_peak=stats.memory_peak,
            io_read_bytes=stats.io_read_bytes, io_write_bytes=stats.io_write_bytes, pids=stats.pids_current,
            net_rx_bytes=rx, net_tx_bytes=tx, cpu_throttled_ns=stats.cpu_throttled_ns, oom_kills=stats.oom_kills,
        )

    def _persist(self, samples: list[JobSample]) -> None:
        if self.db is None or not samples:
            return
        with self.db.tx(spare=False) as conn:  # the database's spare space is for state changes, not samples
            for s in samples:
                with contextlib.suppress(sqlite3.IntegrityError):   # the job was deleted meanwhile
                    conn.execute(
                        "INSERT INTO job_metrics(job_id, timestamp_ns, sample) VALUES(?,?,?)"
                        " ON CONFLICT(job_id) DO UPDATE SET timestamp_ns = excluded.timestamp_ns,"
                        " sample = excluded.sample", (s.job_id, s.timestamp_ns, json.dumps(s.to_dict())))

    # -- reading -------------------------------------------------------------------------------
    def latest(self, job_id: str) -> JobSample | None:
        with self._cond:
            ring = self._rings.get(job_id)
            if ring:
                return ring[-1]
        if self.db is None:
            return None
        row = self.db.query_one("SELECT sample FROM job_metrics WHERE job_id = ?", (job_id,))
        return None if row is None else JobSample.from_dict(json.loads(row["sample"]))

    def history(self, job_id: str) -> list[JobSample]:
        with self._cond:
            return list(self._rings.get(job_id, ()))

    def running_latest(self) -> list[JobSample]:
        with self._cond:
            return [ring[-1] for ring in self._rings.values() if ring]

    def host_latest(self) -> HostSample | None:
        with self._cond:
            if self._host is not None:
                return self._host
        if self.host is None:
            return None
        self.sample_once()
        with self._cond:
            return self._host

    def wait_newer(self, job_id: str, after_ns: int, timeout: float) -> JobSample | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                ring = self._rings.get(job_id)
                if ring and ring[-1].timestamp_ns > after_ns:
                    return ring[-1]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return None
                self._cond.wait(remaining)

    def stream(self, job_id: str, *, follow: bool, ended: Callable[[], bool], history: bool = False,
               stop: threading.Event | None = None) -> Iterator[JobSample]:
        """Samples of one job: the kept history (if asked), the latest, then (follow) each new one until
        the job has ended or ``stop`` is set."""
        last = 0
        if history:
            for s in self.history(job_id):
                last = s.timestamp_ns
                yield s
        if not last:
            first = self.latest(job_id)
            if first is None and not ended():   # a job that just started: its first sample is one tick away
                first = self.wait_newer(job_id, 0, timeout=2 * self.interval_s + 1)
            if first is None and not follow:
                raise NotFound(f"no metrics were sampled for job {job_id[:12]}"
                               " (it has not run yet, or ended before its first sample)")
            if first is not None:
                last = first.timestamp_ns
                yield first
        wait = max(0.2, 2 * self.interval_s)
        while follow and not (stop is not None and stop.is_set()) and not self._stop.is_set():
            s = self.wait_newer(job_id, last, timeout=wait)
            if s is not None:
                last = s.timestamp_ns
                yield s
            elif ended():
                return
