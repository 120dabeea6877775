"""Workflows of jobs: submit, list, status, cancel; each one executed as one durable FSM run.

A submitted workflow is validated as a whole (every problem reported at once), recorded with one
row per job, and handed to the ``workflow.run`` machine (:mod:`capsa.workflows._runner`). Its jobs
are ordinary jobs (``capsa ps`` lists them, named ``WORKFLOW/JOB`` and linked back through
``workflow_id``/``workflow_job``).
"""

from __future__ import annotations

import json
import secrets
import shutil
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

from capsa.errors import CapsaError, InvalidArgument, NotFound, Timeout
from capsa.fsm import Engine, Machine
from capsa.selectors import check_labels
from capsa.state.keys import check_request_id, resolve_id_prefix
from capsa.workflows._runner import WorkflowRunner
from capsa.workflows.model import MIGRATIONS, Workflow, WorkflowJob, WorkflowJobState, WorkflowState
from capsa.workflows.validation import Registries, ValidatedWorkflow, validate_workflow

if TYPE_CHECKING:
    from capsa.jobs.secrets import SecretBox
    from capsa.jobs.service import JobService
    from capsa.state import Database

__all__ = ["DEFAULT_MAX_PARALLEL", "MACHINE", "QUEUE", "WorkflowService"]

MACHINE = "workflow.run"
QUEUE = "workflows"           # the engine queue the daemon gives workflow runs (see capsa/daemon.py)
DEFAULT_MAX_PARALLEL = 8

# Which workflow a submission with a client request id recorded (in the workflow's own transaction,
# the primary key deciding between two at once), so a retried submit returns it instead of running again.
_REQUEST_MIGRATIONS = [
    """
    CREATE TABLE workflow_requests (
        request_id TEXT PRIMARY KEY,
        workflow_id TEXT NOT NULL REFERENCES workflows(id) ON DELETE CASCADE
    );
    """,
]


class WorkflowService:
    """The workflow domain. Construct it before ``engine.resume()`` so its machine is registered.

    ``max_parallel`` bounds the jobs of one workflow running at a time (a workflow's own
    ``max_parallel`` may lower or raise it); ``queue`` is the engine queue for workflow runs
    (None: the engine's shared pool). Job timeouts are the job service's (state TIMEOUT).
    ``secret_box`` seals the jobs' secret environment until they start (the node's, as for jobs).
    """

    def __init__(self, db: Database, engine: Engine, jobs: JobService, *, secret_box: SecretBox,
                 registries: Registries | None = None,
                 max_parallel: int = DEFAULT_MAX_PARALLEL, poll_interval_s: float = 0.2,
                 queue: str | None = None, cancel_timeout_s: float | None = None) -> None:
        if max_parallel < 1:
            raise InvalidArgument(f"max_parallel must be at least 1, got {max_parallel}")
        self.db = db
        self.engine = engine
        self.jobs = jobs
        self.registries = registries or Registries()
        self.max_parallel = max_parallel
        self.cancel_timeout_s = cancel_timeout_s if cancel_timeout_s is not None else jobs.stop_grace_s + 30
        self.secret_box = secret_box
        # Each job's uploads, kept from submit until the workflow ends (a job may start hours later,
        # after a daemon restart): CAPSA_HOME/workflows/uploads/WORKFLOW/JOB.
        self.uploads_dir = jobs.home / "workflows" / "uploads"
        db.migrate("workflows", MIGRATIONS)
        db.migrate("workflow_requests", _REQUEST_MIGRATIONS)
        # its own component: labels came on their own branch (capsa.selectors)
        db.migrate("workflow_labels", ["ALTER TABLE workflows ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';"])
        self.runner = WorkflowRunner(db, jobs, secret_box=secret_box, max_parallel=max_parallel, poll_interval_s=poll_interval_s,
                                     runtime_image=self.registries.runtime_image, uploads_dir=self.uploads_dir)
        engine.register(Machine.define(MACHINE, queue=queue).start("run", self.runner.run).end(self.runner.finalize))
        self._start_orphans()

    # -- submit ---------------------------------------------------------------------------------
    def validate(self, yaml_text: str, *, base_dir: str = "", source: str = "workflow") -> ValidatedWorkflow:
        """Check a workflow without running it; InvalidArgument lists every problem with its line."""
        base = Path(base_dir) if base_dir else None
        if base is not None and not base.is_absolute():
            raise InvalidArgument(f"base directory {base_dir!r} must be an absolute path")
        return validate_workflow(yaml_text, registries=self.registries, base_dir=base, source=source)

    def submit(self, yaml_text: str, *, base_dir: str = "", source: str = "workflow",
               request_id: str = "", labels: dict[str, str] | None = None) -> Workflow:
        """Validate, record and start a workflow; a ``request_id`` seen before returns that workflow."""
        if check_request_id(request_id):
            earlier = self._submitted_as(request_id)
            if earlier is not None:
                return self.get(earlier)
        workflow = self.validate(yaml_text, base_dir=base_dir, source=source)
        labels = check_labels(labels or {})
        spec = workflow.spec
        workflow_id = secrets.token_hex(16)
        max_parallel = spec.max_parallel or self.max_parallel
        # Secret values never reach the database in plain text (as for `capsa run --secret-env`).
        hidden = {name: json.dumps(job.secret_env) for name, job in spec.jobs.items() if job.secret_env}
        sealed = self.secret_box.seal(hidden) if hidden else None
        public = spec.model_copy(update={"jobs": {name: job.model_copy(update={"secret_env": {}})
                                                  for name, job in spec.jobs.items()}})
        self._keep_uploads(workflow_id, workflow.upload_sessions)
        try:
            with self.db.tx() as conn:
                conn.execute(
                    "INSERT INTO workflows(id, name, description, state, spec, sealed_secrets, max_parallel,"
                    " created_ns, labels) VALUES(?,?,?,?,?,?,?,?,?)",
                    (workflow_id, spec.name, spec.description, WorkflowState.PENDING.value,
                     public.model_dump_json(), sealed, max_parallel, time.time_ns(), json.dumps(labels)),
                )
                conn.executemany(
                    "INSERT INTO workflow_jobs(workflow_id, name, position, state, requires, depends_on)"
                    " VALUES(?,?,?,?,?,?)",
                    [(workflow_id, name, i, WorkflowJobState.WAITING.value, str(workflow.conditions[name]),
                      ",".join(workflow.deps[name])) for i, name in enumerate(workflow.order)],
                )
                if request_id:
                    conn.execute("INSERT INTO workflow_requests(request_id, workflow_id) VALUES(?,?)",
                                 (request_id, workflow_id))
        except BaseException as exc:
            shutil.rmtree(self.uploads_dir / workflow_id, ignore_errors=True)   # nothing recorded owns them
            earlier = self._submitted_as(request_id) if request_id and isinstance(exc, sqlite3.IntegrityError) else None
            if earlier is None:
                raise
            return self.get(earlier)   # a concurrent submit with the same id recorded its workflow first
        self._start_run(workflow_id)
        return self.get(workflow_id)

    def _keep_uploads(self, workflow_id: str, sessions: dict[str, str]) -> None:
        """Claim each job's upload session into the workflow's directory (a session is claimed once)."""
        try:
            for name, session in sessions.items():
                self.jobs.uploads.claim(session, self.uploads_dir / workflow_id / name)
        except BaseException:
            shutil.rmtree(self.uploads_dir / workflow_id, ignore_errors=True)
            raise

    def _submitted_as(self, request_id: str) -> str | None:
        row = self.db.query_one("SELECT workflow_id FROM workflow_requests WHERE request_id = ?", (request_id,))
        return None if row is None else str(row["workflow_id"])

    def _start_run(self, workflow_id: str) -> None:
        handle = self.engine.start(MACHINE, workflow_id, "run", {"workflow_id": workflow_id})
        self.db.execute("UPDATE workflows SET run_id = ? WHERE id = ?", (handle.run_id, workflow_id))

    def _start_orphans(self) -> None:
        """Workflows recorded just before a crash, before their run was: start that run now."""
        for row in self.db.query("SELECT id FROM workflows WHERE run_id = '' AND state IN (?, ?)",
                                 (WorkflowState.PENDING.value, WorkflowState.RUNNING.value)):
            self._start_run(row["id"])

    # -- queries --------------------------------------------------------------------------------
    def resolve_id(self, id_or_prefix: str) -> str:
        return resolve_id_prefix(self.db, "workflows", id_or_prefix, noun="workflow")

    def get(self, id_or_prefix: str) -> Workflow:
        workflow_id = self.resolve_id(id_or_prefix)
        row = self.db.query_one("SELECT * FROM workflows WHERE id = ?", (workflow_id,))
        if row is None:
            raise NotFound(f"no such workflow: {id_or_prefix}")
        return Workflow.from_row(row, self._jobs_of(workflow_id))

    def _jobs_of(self, workflow_id: str) -> list[WorkflowJob]:
        rows = self.db.query("SELECT * FROM workflow_jobs WHERE workflow_id = ? ORDER BY position", (workflow_id,))
        return [WorkflowJob.from_row(r) for r in rows]

    def list(self, *, limit: int = 0) -> list[Workflow]:
        """Workflows, newest first, with their jobs (``limit`` 0: all)."""
        sql = "SELECT * FROM workflows ORDER BY created_ns DESC" + (" LIMIT ?" if limit > 0 else "")
        rows = self.db.query(sql, (limit,) if limit > 0 else ())
        return [Workflow.from_row(r, self._jobs_of(r["id"])) for r in rows]

    def wait(self, id_or_prefix: str, timeout: float | None = None) -> Workflow:
        """The workflow once it has ended; Timeout if it is still going after ``timeout`` seconds."""
        workflow_id = self.resolve_id(id_or_prefix)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            workflow = self.get(workflow_id)
            if workflow.state.ended:
                return workflow
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"workflow {workflow.short_id} is still {workflow.state.value}")
            time.sleep(0.1)

    # -- cancel ---------------------------------------------------------------------------------
    def cancel(self, id_or_prefix: str) -> Workflow:
        """Cancel a workflow: running jobs are stopped, waiting ones never start. Waits for the end."""
        workflow = self.get(id_or_prefix)
        if workflow.state.ended:
            return workflow
        if workflow.run_id:
            self.engine.cancel(workflow.run_id)
            try:
                self.engine.handle(workflow.run_id).wait(timeout=self.cancel_timeout_s)
            except CapsaError as exc:
                if exc.code == Timeout.code:
                    raise Timeout(f"workflow {workflow.short_id} is still stopping its jobs") from None
                # Canceled (the expected outcome) or a run that failed meanwhile: the table says which.
        return self.get(workflow.id)
