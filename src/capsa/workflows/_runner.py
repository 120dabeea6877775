"""One workflow's execution: the body of the ``workflow.run`` transition, and its finalizer.

The transition loops until every job of the workflow has ended: it starts each job whose
requirements hold (at most ``max_parallel`` at a time), records the job's id, collects ends,
and skips jobs whose requirements can no longer hold (timeouts are the job service's).
Everything it knows is in the ``workflow_jobs`` table and the ``jobs`` table, re-read on every
pass, so after a ``kill -9`` the resumed transition simply continues: a job already started (even
one started just before the crash, whose id was never recorded: the jobs table links it back to
the workflow) is re-attached, never started twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capsa.errors import CapsaError, NotFound, Unavailable
from capsa.events import EventLog
from capsa.fsm import Context, RunInfo
from capsa.jobs.model import Job, JobState, Resources, RunRequest
from capsa.workflows.model import WorkflowJob, WorkflowJobState, WorkflowState
from capsa.workflows.schema import JobSpec, WorkflowSpec
from capsa.workflows.validation import ValidatedWorkflow, compile_spec

if TYPE_CHECKING:
    from capsa.jobs.secrets import SecretBox
    from capsa.jobs.service import JobService
    from capsa.state import Database

__all__ = ["WorkflowRunner"]

_NEVER_STARTED = "restarted before the job started"   # JobService's reason for a job lost that way

log = logging.getLogger("capsa.workflows")

class WorkflowRunner:
    """Executes workflows for the service; holds no per-workflow state between passes."""

    def __init__(self, db: Database, jobs: JobService, *, secret_box: SecretBox, max_parallel: int,
                 poll_interval_s: float, runtime_image: Callable[[str], str | None] | None,
                 uploads_dir: Path) -> None:
        self.db = db
        self.jobs = jobs
        self.secret_box = secret_box
        self.max_parallel = max_parallel
        self.poll_interval_s = poll_interval_s
        self.runtime_image = runtime_image
        self.uploads_dir = uploads_dir

    # -- the transition -------------------------------------------------------------------------
    def run(self, ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
        workflow_id = str(request["workflow_id"])
        row = self.db.query_one("SELECT * FROM workflows WHERE id = ?", (workflow_id,))
        if row is None:
            raise NotFound(f"workflow {workflow_id} is not recorded")
        if WorkflowState(row["state"]).ended:
            return {"state": row["state"]}   # finished before a crash: nothing left to do
        ctx.check_cancel()
        if self.db.execute("UPDATE workflows SET state = ?, started_ns = CASE WHEN started_ns = 0 THEN ? ELSE"
                           " started_ns END WHERE id = ? AND state = ?",
                           (WorkflowState.RUNNING.value, time.time_ns(), workflow_id,
                            WorkflowState.PENDING.value)).rowcount:
            EventLog.of(self.db).safe_record("workflow", "started", workflow_id, name=row["name"])
        workflow = compile_spec(WorkflowSpec.model_validate_json(row["spec"]))
        limit = min(int(row["max_parallel"]), len(workflow.order)) or 1
        secret_env = self._secrets(row["sealed_secrets"])
        self._adopt(workflow_id)
        while True:
            ctx.check_cancel()   # canceled: the finalizer stops the jobs; shutdown: parked, resumes later
            steps = self._steps(workflow_id)
            changed = self._collect(workflow_id, steps)
            changed |= self._skip_or_start(ctx, workflow_id, row["name"], workflow, steps, limit, secret_env)
            if all(s.state.ended for s in steps.values()):
                return self._conclude(workflow_id, steps)
            ended = sum(1 for s in steps.values() if s.state.ended)
            ctx.progress(jobs=len(steps), ended=ended)
            if changed:
                continue
            running = [s.job_id for s in steps.values() if s.state == WorkflowJobState.RUNNING and s.job_id]
            if running:
                # Woken early when a job ends (JobService notifies every waiter on any exit).
                self.jobs.wait_ended(running[0], timeout=self.poll_interval_s)
            else:
                ctx.cancel.wait(self.poll_interval_s)

    def _secrets(self, sealed: bytes | None) -> dict[str, dict[str, str]]:
        if not sealed:
            return {}
        return {name: json.loads(text) for name, text in self.secret_box.open(sealed).items()}

    def _steps(self, workflow_id: str) -> dict[str, WorkflowJob]:
        rows = self.db.query("SELECT * FROM workflow_jobs WHERE workflow_id = ? ORDER BY position", (workflow_id,))
        return {r["name"]: WorkflowJob.from_row(r) for r in rows}

    def _linked_job(self, workflow_id: str, name: str) -> Job | None:
        """The job started for this workflow job, if any: the jobs table links it back."""
        row = self.db.query_one("SELECT id FROM jobs WHERE workflow_id = ? AND workflow_job = ?"
                                " ORDER BY created_ns DESC LIMIT 1", (workflow_id, name))
        if row is None:
            return None
        job = self.jobs.get(row["id"])
        # Recorded, then the daemon died before the supervisor started it: it never ran, so
        # starting it now does not run it twice.
        never_ran = (job.state == JobState.FAILED and not job.started_ns and not job.pid
                     and _NEVER_STARTED in job.reason)
        return None if never_ran else job

    def _adopt(self, workflow_id: str) -> None:
        """Re-attach jobs started before a crash whose id was not recorded yet."""
        for step in self._steps(workflow_id).values():
            if step.state != WorkflowJobState.WAITING:
                continue
            job = self._linked_job(workflow_id, step.name)
            if job is not None:
                log.info("workflow %s: re-attaching job %s to %s", workflow_id[:12], job.short_id, step.name)
                self._mark_running(workflow_id, step.name, job)

    def _mark_running(self, workflow_id: str, name: str, job: Job) -> None:
        self.db.execute("UPDATE workflow_jobs SET state = ?, job_id = ?, started_ns = ?"
                        " WHERE workflow_id = ? AND name = ? AND state = ?",
                        (WorkflowJobState.RUNNING.value, job.id, job.started_ns or job.created_ns, workflow_id,
                         name, WorkflowJobState.WAITING.value))

    def _end_step(self, workflow_id: str, step: WorkflowJob, state: WorkflowJobState, reason: str, *,
                  exit_code: int | None = None, ended_ns: int = 0, job_id: str | None = None) -> None:
        self.db.execute(
            "UPDATE workflow_jobs SET state = ?, reason = ?, exit_code = ?, ended_ns = ?,"
            " job_id = COALESCE(?, job_id) WHERE workflow_id = ? AND name = ? AND state IN (?, ?)",
            (state.value, reason, exit_code, ended_ns or time.time_ns(), job_id, workflow_id, step.name,
             WorkflowJobState.WAITING.value, WorkflowJobState.RUNNING.value),
        )
        step.state, step.reason = state, reason

    # -- ends ----------------------------------------------------------------------
    def _collect(self, workflow_id: str, steps: dict[str, WorkflowJob]) -> bool:
        changed = False
        for step in steps.values():
            if step.state != WorkflowJobState.RUNNING:
                continue
            try:
                job = self.jobs.get(step.job_id)
            except NotFound:
                self._end_step(workflow_id, step, WorkflowJobState.FAILED, f"job {step.job_id[:12]} was removed")
                changed = True
                continue
            if not job.state.ended:
                continue
            state, reason = _outcome(job)
            self._end_step(workflow_id, step, state, reason, exit_code=job.exit_code, ended_ns=job.ended_ns)
            changed = True
        return changed

    def _stop_quietly(self, job_id: str) -> None:
        try:
            self.jobs.stop(job_id)
        except CapsaError as exc:
            log.warning("stopping job %s failed: %s", job_id[:12], exc)

    # -- requirements and starts ----------------------------------------------------------------------
    def _skip_or_start(self, ctx: Context, workflow_id: str, workflow_name: str, workflow: ValidatedWorkflow,
                       steps: dict[str, WorkflowJob], limit: int, secret_env: dict[str, dict[str, str]]) -> bool:
        changed = False
        outcomes = {name: (s.state.value if s.state.ended else None) for name, s in steps.items()}
        running = sum(1 for s in steps.values() if s.state == WorkflowJobState.RUNNING)
        for name in workflow.order:   # dependencies first: a skip decided here is seen by its dependents
            step = steps[name]
            if step.state != WorkflowJobState.WAITING:
                continue
            condition = workflow.conditions[name]
            verdict = condition.evaluate(outcomes)
            if verdict is False:
                known = ", ".join(f"{dep} {outcomes[dep]}" for dep in sorted(condition.jobs()) if outcomes[dep])
                self._end_step(workflow_id, step, WorkflowJobState.SKIPPED,
                               f"requirement {condition} can no longer hold: {known}")
                outcomes[name] = WorkflowJobState.SKIPPED.value
                changed = True
            elif verdict is True and running < limit:
                ctx.check_cancel()
                self._start(ctx, workflow_id, workflow_name, step, workflow.spec.jobs[name], secret_env.get(name, {}))
                outcomes[name] = step.state.value if step.state.ended else None
                running += 1 if step.state == WorkflowJobState.RUNNING else 0
                changed = True
        return changed

    def _start(self, ctx: Context, workflow_id: str, workflow_name: str, step: WorkflowJob, spec: JobSpec,
               secret_env: dict[str, str]) -> None:
        existing = self._linked_job(workflow_id, step.name)   # check real state: never start twice
        if existing is not None:
            self._mark_running(workflow_id, step.name, existing)
            step.state, step.job_id = WorkflowJobState.RUNNING, existing.id
            return
        try:
            job = self.jobs.run(dataclasses.replace(
                self._request(workflow_id, workflow_name, step.name, spec, secret_env),
                labels=self._labels(workflow_id)))
        except CapsaError as exc:
            if ctx.cancel.is_set():
                raise   # e.g. the image pull it waited for was cut short by shutdown: not the job's fault
            linked = self._linked_job(workflow_id, step.name)
            self._end_step(workflow_id, step, WorkflowJobState.FAILED, f"start failed: {exc}",
                           job_id=linked.id if linked else None)
            return
        self._mark_running(workflow_id, step.name, job)
        step.state, step.job_id = WorkflowJobState.RUNNING, job.id

    def _labels(self, workflow_id: str) -> dict[str, str]:
        """The workflow's labels, which every job of it carries (so `ps --filter label=` finds them)."""
        row = self.db.query_one("SELECT labels FROM workflows WHERE id = ?", (workflow_id,))
        return dict(json.loads(row["labels"])) if row else {}

    def _request(self, workflow_id: str, workflow_name: str, name: str, spec: JobSpec,
                 secret_env: dict[str, str]) -> RunRequest:
        image = spec.image
        if spec.runtime:
            image = (self.runtime_image(spec.runtime) if self.runtime_image else None) or ""
            if not image:
                raise NotFound(f"runtime {spec.runtime!r} is no longer available")
        argv = (spec.command, *spec.args) if spec.command else tuple(spec.args)
        r = spec.resources
        # A fresh session per start (each is claimed once, as the job's /work); the workflow keeps the original.
        session = self._upload_session(workflow_id, name) if spec.uploads else ""
        return RunRequest(
            command=argv, env=dict(spec.env), secret_env=secret_env, workdir=spec.workdir,
            name=f"{workflow_name}/{name}", image=image, workflow_id=workflow_id, workflow_job=name,
            timeout=spec.timeout or "", network=spec.network or "host", volumes=tuple(spec.volumes),
            capsules=tuple(spec.capsules), gpus=spec.gpus, user=spec.user, seccomp=spec.seccomp, pull=spec.pull,
            upload_session=session, ports=tuple(spec.ports),
            resources=Resources(max_cpu=r.max_cpu, cpu_cores=r.cpu_cores, max_memory_mb=r.max_memory,
                                max_iobps=r.max_iobps, max_pids=r.max_pids),
        )

    def _upload_session(self, workflow_id: str, name: str) -> str:
        kept = self.uploads_dir / workflow_id / name
        if not kept.is_dir():
            raise NotFound(f"the uploads of job {name} are gone ({kept} was removed)")
        try:
            return self.jobs.uploads.stage_copy(kept)
        except OSError as exc:
            raise Unavailable(f"cannot stage the uploads of job {name}: {exc}") from None

    # -- the end ------------------------------------------------------------------------------------
    def _conclude(self, workflow_id: str, steps: dict[str, WorkflowJob]) -> dict[str, Any]:
        failed = [s for s in steps.values() if s.state == WorkflowJobState.FAILED]
        state = WorkflowState.FAILED if failed else WorkflowState.COMPLETED
        reason = ", ".join(f"job {s.name} failed ({s.reason})" for s in failed)
        if self.db.execute("UPDATE workflows SET state = ?, reason = ?, ended_ns = ? WHERE id = ? AND state IN (?, ?)",
                           (state.value, reason, time.time_ns(), workflow_id, WorkflowState.PENDING.value,
                            WorkflowState.RUNNING.value)).rowcount:
            EventLog.of(self.db).safe_record("workflow", "finished", workflow_id, attributes={"state": state.value})
        return {"state": state.value}

    def finalize(self, ctx: Context, info: RunInfo) -> None:
        """Runs once the run is final. Canceled or failed: stop what still runs, close the books."""
        workflow_id = str((info.request or {}).get("workflow_id", ctx.resource_id))
        if info.state == "handed_off":
            return
        if info.state == "succeeded":
            self._drop_uploads(workflow_id)
            return
        canceled = info.state == "canceled"
        steps = self._steps(workflow_id)
        running = [s for s in steps.values() if s.state == WorkflowJobState.RUNNING and s.job_id]
        stoppers = [threading.Thread(target=self._stop_quietly, args=(s.job_id,), name=f"wf-stop-{s.job_id[:8]}",
                                     daemon=True) for s in running]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        why = "workflow canceled" if canceled else f"workflow failed: {info.error_message or 'its run failed'}"
        for step in self._steps(workflow_id).values():
            if step.state.ended:
                continue
            job = None
            if step.job_id:
                with contextlib.suppress(NotFound):
                    job = self.jobs.get(step.job_id)
            if job is not None and job.state in (JobState.COMPLETED, JobState.FAILED, JobState.TIMEOUT):
                state, reason = _outcome(job)   # it ended on its own: keep its real outcome
                self._end_step(workflow_id, step, state, reason, exit_code=job.exit_code, ended_ns=job.ended_ns)
            else:
                self._end_step(workflow_id, step, WorkflowJobState.CANCELED, why,
                               exit_code=job.exit_code if job is not None else None)
        state = WorkflowState.CANCELED if canceled else WorkflowState.FAILED
        if self.db.execute("UPDATE workflows SET state = ?, reason = ?, ended_ns = ? WHERE id = ? AND state IN (?, ?)",
                           (state.value, "" if canceled else why, time.time_ns(), workflow_id,
                            WorkflowState.PENDING.value, WorkflowState.RUNNING.value)).rowcount:
            EventLog.of(self.db).safe_record("workflow", "finished", workflow_id, attributes={"state": state.value})
        self._drop_uploads(workflow_id)

    def _drop_uploads(self, workflow_id: str) -> None:
        """The workflow has ended: no job of it starts again, so its kept uploads go."""
        shutil.rmtree(self.uploads_dir / workflow_id, ignore_errors=True)


def _outcome(job: Job) -> tuple[WorkflowJobState, str]:
    if job.state == JobState.COMPLETED:
        return WorkflowJobState.COMPLETED, ""
    if job.state == JobState.TIMEOUT:
        return WorkflowJobState.FAILED, "timeout"
    if job.state == JobState.STOPPED:
        return WorkflowJobState.FAILED, "stopped outside the workflow"
    if job.state == JobState.CANCELED:
        return WorkflowJobState.FAILED, "canceled outside the workflow"
    if job.reason:
        return WorkflowJobState.FAILED, job.reason
    return WorkflowJobState.FAILED, f"exit code {job.exit_code}"
