"""Workflows as the daemon records them, and their tables in the state database."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["MIGRATIONS", "Workflow", "WorkflowJob", "WorkflowJobState", "WorkflowState"]


class WorkflowState(StrEnum):
    PENDING = "PENDING"       # recorded; its run has not picked it up yet
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"   # every job that ran succeeded
    FAILED = "FAILED"         # at least one job that ran failed (or the run itself failed)
    CANCELED = "CANCELED"

    @property
    def ended(self) -> bool:
        return self in (WorkflowState.COMPLETED, WorkflowState.FAILED, WorkflowState.CANCELED)


class WorkflowJobState(StrEnum):
    WAITING = "WAITING"       # its requirements are not decided yet (or no slot is free)
    RUNNING = "RUNNING"       # started: ``job_id`` names the job
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"         # the job failed, timed out, could not start, or was stopped by hand
    SKIPPED = "SKIPPED"       # its requirements can no longer hold; ``reason`` says why
    CANCELED = "CANCELED"     # the workflow was canceled before or while it ran

    @property
    def ended(self) -> bool:
        return self not in (WorkflowJobState.WAITING, WorkflowJobState.RUNNING)


@dataclass
class WorkflowJob:
    name: str
    state: WorkflowJobState
    position: int = 0
    job_id: str = ""
    reason: str = ""
    requires: str = ""            # the requirement, normalised ("(none)" when there is none)
    depends_on: list[str] = field(default_factory=list)
    exit_code: int | None = None
    started_ns: int = 0
    ended_ns: int = 0

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> WorkflowJob:
        return cls(
            name=row["name"], state=WorkflowJobState(row["state"]), position=row["position"],
            job_id=row["job_id"] or "", reason=row["reason"], requires=row["requires"],
            depends_on=[d for d in row["depends_on"].split(",") if d], exit_code=row["exit_code"],
            started_ns=row["started_ns"], ended_ns=row["ended_ns"],
        )


@dataclass
class Workflow:
    id: str
    name: str
    state: WorkflowState
    description: str = ""
    reason: str = ""
    max_parallel: int = 0
    run_id: str = ""
    created_ns: int = 0
    started_ns: int = 0
    ended_ns: int = 0
    jobs: list[WorkflowJob] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @classmethod
    def from_row(cls, row: sqlite3.Row, jobs: list[WorkflowJob]) -> Workflow:
        return cls(
            id=row["id"], name=row["name"], state=WorkflowState(row["state"]), description=row["description"],
            reason=row["reason"], max_parallel=row["max_parallel"], run_id=row["run_id"],
            created_ns=row["created_ns"], started_ns=row["started_ns"], ended_ns=row["ended_ns"], jobs=jobs,
            labels=json.loads(row["labels"]),
        )


MIGRATIONS = [
    """
    CREATE TABLE workflows (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        spec TEXT NOT NULL,                -- the validated spec, secret_env values removed
        sealed_secrets BLOB,               -- {job: secret_env as JSON}, sealed by the jobs' SecretBox
        max_parallel INTEGER NOT NULL,
        run_id TEXT NOT NULL DEFAULT '',
        created_ns INTEGER NOT NULL,
        started_ns INTEGER NOT NULL DEFAULT 0,
        ended_ns INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX workflows_created ON workflows(created_ns);
    CREATE INDEX workflows_state ON workflows(state);
    CREATE TABLE workflow_jobs (
        workflow_id TEXT NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        position INTEGER NOT NULL,
        state TEXT NOT NULL,
        job_id TEXT,
        reason TEXT NOT NULL DEFAULT '',
        requires TEXT NOT NULL DEFAULT '',
        depends_on TEXT NOT NULL DEFAULT '',
        exit_code INTEGER,
        started_ns INTEGER NOT NULL DEFAULT 0,
        ended_ns INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (workflow_id, name)
    );
    """,
]
