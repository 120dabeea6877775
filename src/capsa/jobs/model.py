"""Jobs as the daemon records them, and their table in the state database."""

from __future__ import annotations

import functools
import json
import sqlite3
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["ACTIVE_STATES", "LISTED_STATES", "MIGRATIONS", "Job", "JobPage", "JobState", "Resources", "RunRequest"]


class JobState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    SCHEDULED = "SCHEDULED"     # waiting for its start time (capsa.jobs.schedule)
    CANCELED = "CANCELED"       # canceled before it started
    TIMEOUT = "TIMEOUT"         # stopped because it ran longer than its --timeout

    @property
    def ended(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.STOPPED, JobState.CANCELED, JobState.TIMEOUT)


ACTIVE_STATES = (JobState.PENDING.value, JobState.RUNNING.value)
# What `ps` lists without --all: the active jobs and those waiting for their start time.
LISTED_STATES = (*ACTIVE_STATES, JobState.SCHEDULED.value)


@dataclass(frozen=True)
class Resources:
    max_cpu: int = 0            # percent of one core
    cpu_cores: str = ""         # cpuset
    max_memory_mb: int = 0
    max_iobps: int = 0
    max_pids: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"max_cpu": self.max_cpu, "cpu_cores": self.cpu_cores, "max_memory_mb": self.max_memory_mb,
                "max_iobps": self.max_iobps, "max_pids": self.max_pids}


@dataclass(frozen=True)
class RunRequest:
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    workdir: str = ""             # default: the image's WorkingDir, else /work
    name: str = ""
    image: str = ""               # empty: the host's userland, read-only
    pull: str = "missing"
    user: str = ""                # UID[:GID]; default: the image's User, else root
    command_given: bool = True    # False: run the image's Entrypoint + Cmd
    workflow_id: str | None = None   # set for the jobs of a workflow, with the job's name in it
    workflow_job: str | None = None
    # Delivered into the job's environment only; never stored in plain text (capsa.jobs.secrets).
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)
    upload_session: str = ""      # a staged upload (capsa.jobs.uploads) placed as the job's /work
    schedule: str = ""            # "30s", "2h30m" or RFC 3339: start later (capsa.jobs.schedule)
    timeout: str = ""             # a duration: stop the job (state TIMEOUT) when it runs longer
    seccomp: str = "default"      # default | strict | unconfined (docs/security.md)
    network: str = "host"         # host | none | isolated | bridge | a named network
    volumes: tuple[str, ...] = () # NAME[:/path][:ro]
    ports: tuple[str, ...] = ()   # [HOSTIP:]HOSTPORT:JOBPORT[/tcp|/udp], published while it runs (capsa.networks)
    runtime: str = ""             # NAME[@VERSION]: the job's root is that runtime's image only (capsa.runtimes)
    capsules: tuple[str, ...] = ()  # NAME@SPEC[:PATH], with dependencies (capsa.capsules.manager)
    gpus: int = 0                 # whole GPUs, exclusively (capsa.gpus)
    # Client-generated idempotency key (capsa.state.keys): a second run with the same key returns
    # the first job instead of running again.
    request_id: str = ""
    restart: str = ""             # no | on-failure[:N] | always (capsa.jobs.restart)
    log_max_size: str = ""        # e.g. 10M: keep the newest bytes of the log, drop whole oldest segments
    labels: dict[str, str] = field(default_factory=dict)   # KEY=VALUE, stored and returned (capsa.selectors)
    auto_remove: bool = False     # --rm: the daemon removes the job, its logs and files once it ended
    stdin: str = ""               # "" /dev/null | "pipe" (-i) | "tty" (-t): see capsa.jobs.attach, ADR-0013
    tty_size: tuple[int, int] = (0, 0)   # -t: rows, cols of the terminal at start (0: the kernel's default)


@dataclass
class Job:
    id: str
    command: list[str]
    state: JobState
    name: str = ""
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/work"
    resources: Resources = field(default_factory=Resources)
    exit_code: int | None = None
    signal: int = 0
    reason: str = ""
    created_ns: int = 0
    started_ns: int = 0
    ended_ns: int = 0
    pid: int = 0
    hostname: str = ""
    cgroup: str = ""
    start_latency_ns: int = 0
    stop_requested: bool = False
    image: str = ""
    image_digest: str = ""
    workflow_id: str | None = None
    workflow_job: str | None = None
    scheduled_ns: int = 0         # start time of a scheduled job (wall clock, ns)
    timeout_ns: int = 0           # 0: no timeout
    timed_out: bool = False
    secret_env_keys: list[str] = field(default_factory=list)   # names only, never values
    seccomp: str = "default"
    network: str = "host"
    ip: str = ""
    volumes: list[str] = field(default_factory=list)
    gpus: int = 0
    gpu_devices: list[str] = field(default_factory=list)   # the GPUs it holds (held once ended): UUID or nvidia<minor>
    log_incomplete_bytes: int = 0   # output its log could not keep (disk full, ADR-0004); 0 = complete
    # Its restart policy (capsa.jobs.restart), filled by JobService from its own table, not from this row.
    restart_policy: str = ""
    restart_count: int = 0
    next_restart_ns: int = 0      # wall clock of the restart that is due; 0 = none
    log_dropped_bytes: int = 0    # oldest log bytes dropped by --log-max-size (column of migration job_log_limit)
    labels: dict[str, str] = field(default_factory=dict)
    auto_remove: bool = False

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def live(self) -> bool:
        """Handed to (or being handed to) the supervisor and not ended: it holds what it borrowed."""
        return self.state.value in ACTIVE_STATES

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        # A Row looks a name up by comparing it with every column name in turn (some 40 here):
        # one dict first makes each lookup a hash. Listings decode many rows (ADR-0017).
        row = dict(zip(row.keys(), row, strict=True))  # type: ignore[assignment]
        return cls(
            id=row["id"],
            name=row["name"],
            command=_loads(row["command"]),
            state=JobState(row["state"]),
            env=_loads(row["env"]),
            workdir=row["workdir"],
            resources=_resources(row["resources"]),
            exit_code=row["exit_code"],
            signal=row["signal"],
            reason=row["reason"],
            created_ns=row["created_ns"],
            started_ns=row["started_ns"],
            ended_ns=row["ended_ns"],
            pid=row["pid"],
            hostname=row["hostname"],
            cgroup=row["cgroup"],
            start_latency_ns=row["start_latency_ns"],
            stop_requested=bool(row["stop_requested"]),
            image=row["image"],
            image_digest=row["image_digest"],
            workflow_id=row["workflow_id"],
            workflow_job=row["workflow_job"],
            scheduled_ns=row["scheduled_ns"],
            timeout_ns=row["timeout_ns"],
            timed_out=bool(row["timed_out"]),
            secret_env_keys=_loads(row["secret_env_keys"]),
            seccomp=row["seccomp"],
            network=row["network"],
            ip=row["ip"],
            volumes=_loads(row["volumes"]),
            gpus=row["gpus"],
            gpu_devices=_loads(row["gpu_devices"]),
            log_incomplete_bytes=row["log_incomplete_bytes"],
            # Absent before the job_log_limit migration component.
            log_dropped_bytes=row.get("log_dropped_bytes", 0),  # type: ignore[attr-defined]
            labels=_loads(row["labels"]),
            auto_remove=bool(row["auto_remove"]),
        )


@functools.lru_cache(maxsize=256)
def _resources(text: str) -> Resources:
    """The resources column as ``Resources`` (frozen, so one object serves every row with the same text)."""
    return Resources(**json.loads(text))


def _loads(text: str) -> Any:
    """``json.loads``, without the decoder for the empty objects most columns of most jobs hold."""
    if text == "{}":
        return {}
    if text == "[]":
        return []
    return json.loads(text)


@dataclass(frozen=True)
class JobPage:
    """One page of jobs, newest first; ``next_page_token`` is empty on the last page."""

    jobs: list[Job]
    next_page_token: str = ""


MIGRATIONS = [
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL DEFAULT '',
        command TEXT NOT NULL,
        state TEXT NOT NULL,
        env TEXT NOT NULL DEFAULT '{}',
        workdir TEXT NOT NULL DEFAULT '/work',
        resources TEXT NOT NULL DEFAULT '{}',
        exit_code INTEGER,
        signal INTEGER NOT NULL DEFAULT 0,
        reason TEXT NOT NULL DEFAULT '',
        created_ns INTEGER NOT NULL,
        started_ns INTEGER NOT NULL DEFAULT 0,
        ended_ns INTEGER NOT NULL DEFAULT 0,
        pid INTEGER NOT NULL DEFAULT 0,
        hostname TEXT NOT NULL DEFAULT '',
        cgroup TEXT NOT NULL DEFAULT '',
        start_latency_ns INTEGER NOT NULL DEFAULT 0,
        stop_requested INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_state ON jobs(state);
    CREATE INDEX jobs_created ON jobs(created_ns);
    """,
    """
    ALTER TABLE jobs ADD COLUMN image TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN image_digest TEXT NOT NULL DEFAULT '';
    """,
    """
    ALTER TABLE jobs ADD COLUMN workflow_id TEXT;
    ALTER TABLE jobs ADD COLUMN workflow_job TEXT;
    CREATE INDEX jobs_workflow ON jobs(workflow_id, workflow_job) WHERE workflow_id IS NOT NULL;
    """,
    """
    ALTER TABLE jobs ADD COLUMN scheduled_ns INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN timeout_ns INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN timed_out INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN secret_env_keys TEXT NOT NULL DEFAULT '[]';
    """,
    """
    ALTER TABLE jobs ADD COLUMN seccomp TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE jobs ADD COLUMN network TEXT NOT NULL DEFAULT 'host';
    ALTER TABLE jobs ADD COLUMN ip TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN volumes TEXT NOT NULL DEFAULT '[]';
    """,
    """
    ALTER TABLE jobs ADD COLUMN gpus INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN gpu_devices TEXT NOT NULL DEFAULT '[]';
    """,
    # request_id: idempotent submission (one job per key, decided by the unique index).
    # launched: handed to the supervisor (or about to be); a cancel can no longer stop it from running.
    # jobs_created_id: newest-first pages with a (created_ns, id) keyset; it also serves plain listing.
    """
    ALTER TABLE jobs ADD COLUMN request_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN launched INTEGER NOT NULL DEFAULT 0;
    UPDATE jobs SET launched = 1 WHERE state != 'SCHEDULED';
    CREATE UNIQUE INDEX jobs_request_id ON jobs(request_id) WHERE request_id != '';
    CREATE INDEX jobs_created_id ON jobs(created_ns, id);
    DROP INDEX jobs_created;
    """,
    "ALTER TABLE jobs ADD COLUMN log_incomplete_bytes INTEGER NOT NULL DEFAULT 0;",
    # released_request_id: the request id a job that never started gave back (JobStore.fail_lost); the
    # retry carrying it may take the job's name, which nobody else may.
    "ALTER TABLE jobs ADD COLUMN released_request_id TEXT NOT NULL DEFAULT '';",
]
