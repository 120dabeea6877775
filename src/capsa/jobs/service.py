"""Job lifecycle: submit, start, cancel, stop, delete, logs, and reconciliation after restarts.

The database is the source of truth for what the daemon promised (:mod:`capsa.jobs.store`);
the supervisor is the source of truth for what is actually running. What a job borrows from
the node (network, volumes, GPUs, capsules, image root) is a sequence of
:class:`~capsa.jobs.resources.JobResource`: acquired in order before the start, and released
by one loop on every way out (exit, failed start, cancel, lost job, delete).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from capsa.errors import CapsaError, Conflict, FailedPrecondition, InvalidArgument, NotFound
from capsa.events import EventLog
from capsa.jobs.autoremove import AutoRemoval
from capsa.jobs.jobdirs import prepare_jobs_dir
from capsa.jobs.model import Job, JobPage, JobState, RunRequest
from capsa.jobs.requests import SERVED_FIELDS, apply_image_config, asks_for, build_spec, validate_request
from capsa.jobs.resources import Grant, JobResource, acquire_all, release_all
from capsa.jobs.restart import LOG_LIMIT_MIGRATIONS, RestartStore, parse_restart
from capsa.jobs.schedule import (
    ScheduleStore,
    parse_duration,
    parse_start_time,
    request_from_json,
    request_to_json,
)
from capsa.jobs.secrets import SecretBox, validate_env_names
from capsa.jobs.store import JobStore, NewJob, PageEntry
from capsa.jobs.uploads import UploadLimits, UploadStore
from capsa.logs import LogChunk, read_log
from capsa.runtime import cgroups
from capsa.runtime.client import SupervisorClient, ensure_supervisor
from capsa.runtime.protocol import ExitEvent, JobRecord, ProcState, StartFailedError
from capsa.selectors import JobFilter, check_labels
from capsa.state import Database
from capsa.state.keys import check_request_id

if TYPE_CHECKING:
    from capsa.images.service import JobRootfs

__all__ = ["JobService"]

log = logging.getLogger("capsa.jobs")


def _is_command_not_found(exc: CapsaError) -> bool:
    """The command itself could not be exec'd: the job failed (exit 127) rather than the request."""
    return isinstance(exc, StartFailedError) and exc.failure.exec_failed


class JobService:
    def __init__(self, db: Database, home: Path, supervisor: SupervisorClient, *,
                 resources: Sequence[JobResource] = (), store: JobStore | None = None, stop_grace_s: float = 10.0,
                 upload_limits: UploadLimits | None = None, secret_box: SecretBox | None = None,
                 restart_supervisor: Callable[[], object] | None = None,
                 kill_lost: Callable[[str], None] | None = None) -> None:
        self.db = db
        self.home = home
        self.jobs_dir = home / "jobs"
        prepare_jobs_dir(self.jobs_dir)   # job dirs spread over ext4's block groups: cheap inodes (jobdirs.py)
        self.supervisor = supervisor
        self.resources = tuple(resources)
        self.stop_grace_s = stop_grace_s
        self.store = store or JobStore(db)
        self.events = EventLog.of(db)   # lifecycle events for `capsa events` (capsa.events)
        self.schedules = ScheduleStore(db)
        self.restarts = RestartStore(db)
        db.migrate("job_log_limit", LOG_LIMIT_MIGRATIONS)   # after the jobs table (JobStore) exists
        self.uploads = UploadStore(home / "tmp" / "uploads", upload_limits)
        self._secrets = secret_box or SecretBox(home)
        self._restart_supervisor = restart_supervisor or (lambda: ensure_supervisor(home))
        self._kill_lost = kill_lost or _kill_cgroup   # what is left of a lost job's processes
        self._ended = threading.Condition()
        self._pending_lock = threading.Lock()
        self._pending_exits: dict[str, JobRecord] = {}   # exits the database refused (disk full), by job id
        self.timers_changed = threading.Event()   # a schedule or timeout was added (the Scheduler waits on it)
        self.runtime_image: Callable[[str], str] | None = None   # NAME[@VERSION] -> image (capsa.runtimes)
        self.auto_removal = AutoRemoval(self.get, self.remove)   # --rm (capsa.jobs.autoremove)

    @property
    def auto_remove_linger_s(self) -> float:
        return self.auto_removal.linger_s

    @auto_remove_linger_s.setter
    def auto_remove_linger_s(self, seconds: float) -> None:
        self.auto_removal.linger_s = seconds

    def use_runtimes(self, resolve: Callable[[str], str]) -> None:
        """Let ``RunRequest.runtime`` name a runtime: ``resolve`` maps it to its image (NotFound if none)."""
        self.runtime_image = resolve

    # -- start-up ------------------------------------------------------------------------
    def attach_supervisor(self) -> None:
        """Subscribe to exit events, then reconcile: adopt survivors, fail the lost."""
        self.supervisor.subscribe(self.on_supervisor_event, on_lost=self._supervisor_lost)
        self.reconcile()

    def _supervisor_lost(self) -> None:
        """The supervisor died under us: start a new one, fail the jobs it took along, resubscribe."""
        log.error("the job supervisor went away; starting a new one and reconciling jobs")
        delay = 0.1
        while True:
            try:
                self._restart_supervisor()
                self.attach_supervisor()
                return
            except (CapsaError, OSError) as exc:
                log.error("restarting the supervisor failed: %s (retrying in %.1fs)", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def reconcile(self) -> None:
        known = {rec.job_id: rec for rec in self.supervisor.list()}
        for job in self.store.active():
            rec = known.pop(job.id, None)
            if rec is None:
                self._fail_lost(job)
            elif rec.state == ProcState.EXITED:
                self._record_exit(rec)
            elif rec.state == ProcState.RUNNING:
                self.store.adopt_running(job.id, rec.pid)
        # Exits the supervisor holds for jobs the database already closed.
        for rec in known.values():
            if rec.state == ProcState.EXITED:
                self._record_exit(rec)
        for job_id in self.store.ended_auto_remove():   # --rm jobs a stopped daemon did not get to remove
            self.auto_removal.now(job_id)

    def live_job_ids(self) -> list[str]:
        """Jobs that hold what they borrowed: PENDING (being started) or RUNNING."""
        return [job.id for job in self.store.active()]

    def _fail_lost(self, job: Job) -> None:
        reason = ("lost: the job's supervisor was gone when the daemon restarted or reconnected"
                  if job.state == JobState.RUNNING else "the daemon restarted before the job started")
        self._kill_lost(job.id)
        # A PENDING job the supervisor does not know was never handed to it (the supervisor outlives
        # the daemon and keeps every record until the daemon forgets it): it never ran.
        self.store.fail_lost(job.id, reason, never_started=job.state == JobState.PENDING)
        self._release(job.id)
        self._after_run(job.id)
        self._notify(job.id)

    # -- run -------------------------------------------------------------------------------
    def run(self, request: RunRequest, *, rootfs: JobRootfs | None = None) -> Job:
        """Submit a job. ``rootfs``: a root the caller prepared and owns (runtime build jobs).

        With a ``request_id`` already used, the job submitted with it is returned and nothing runs.
        """
        t0 = time.monotonic_ns()
        if check_request_id(request.request_id):
            existing = self.store.find_request(request.request_id)
            if existing is not None:
                return self.get(existing)
        request = self._check(request, rootfs)
        policy = parse_restart(request.restart)
        if policy.mode != "no" and rootfs is not None:
            raise InvalidArgument("a job on a prepared root cannot have a restart policy")
        submitted = request   # what a restart starts again from (before the image's config is applied)
        timeout_ns = int(parse_duration(request.timeout, what="--timeout") * 1e9) if request.timeout else 0
        start_ns = parse_start_time(request.schedule) if request.schedule else 0
        job_id = secrets.token_hex(16)
        hostname = job_id[:12]
        # Resources that shape the record are acquired first, so their failure leaves no job; a
        # scheduled job acquires everything when it starts.
        early = [] if start_ns or rootfs is not None else [r for r in self.resources if r.before_record]
        grant = acquire_all(early, job_id, request) if rootfs is None else _caller_root(rootfs)
        try:
            if grant.image_config is not None:
                request = apply_image_config(request, grant.image_config)
            if request.upload_session:   # before the job exists: the tree becomes its /work
                self.uploads.claim(request.upload_session, self.jobs_dir / job_id / "work")
            sealed = self._secrets.seal(request.secret_env) if start_ns and request.secret_env else None
            with self.db.tx() as conn:   # a scheduled job and its schedule are recorded together
                earlier = self.store.insert(NewJob(
                    id=job_id, hostname=hostname, request=request, scheduled_ns=start_ns, timeout_ns=timeout_ns,
                    state=JobState.SCHEDULED if start_ns else JobState.PENDING, launched=not start_ns,
                    recorded=grant.recorded))
                if start_ns and earlier is None:
                    self.schedules.add(conn, job_id, start_ns, request, sealed)
                if policy.mode != "no" and earlier is None:
                    self.restarts.add(conn, job_id, policy, request_to_json(submitted), sealed if sealed is not None
                                      else self._secrets.seal(submitted.secret_env) if submitted.secret_env else None)
                if earlier is None:   # committed with the job's row
                    self.events.record("job", "created", job_id, name=request.name, conn=conn,
                                       attributes={"image": request.image, "labels": ",".join(
                                           f"{k}={v}" for k, v in sorted(request.labels.items()))})
        except BaseException:
            release_all(early, job_id, discard=True)
            shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
            raise
        if earlier is not None:   # a concurrent submission with the same request id was recorded first
            release_all(early, job_id, discard=True)
            shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
            return self.get(earlier)
        if start_ns:
            self.timers_changed.set()
            return self.get(job_id)
        late = [r for r in self.resources if not r.before_record]
        return self._launch(job_id, hostname, request, grant, late, t0, recorded_ns=time.monotonic_ns())

    def _check(self, request: RunRequest, rootfs: JobRootfs | None) -> RunRequest:
        """Refuse at submission what could never run; returns the request with its runtime resolved."""
        if request.runtime:
            if request.image or rootfs is not None:
                raise InvalidArgument("give either an image or a runtime, not both")
            if self.runtime_image is None:
                raise InvalidArgument("this daemon has no runtime support configured")
            request = dataclasses.replace(request, image=self.runtime_image(request.runtime), pull="never")
        if rootfs is not None and request.schedule:
            raise InvalidArgument("a job on a prepared root cannot be scheduled")
        if not request.image and rootfs is None and (not request.command or not request.command[0]):
            raise InvalidArgument("no command given: use `capsa run [flags] -- COMMAND [ARGS...]`")
        validate_request(request)
        served = {r.serves for r in self.resources}
        for field, noun in SERVED_FIELDS.items():
            if asks_for(request, field) and field not in served:
                raise InvalidArgument(f"this daemon has no {noun} support configured")
        for resource in self.resources:
            resource.validate(request)   # e.g. capsules are resolved now: a conflict fails the request, not a job
        validate_env_names(request.env, request.secret_env)
        check_labels(request.labels)
        if request.name and "/" not in request.name:   # the engine's own names hold a '/' and may repeat
            taken = self.store.find_name(request.name, retried_by=request.request_id)
            if taken is not None:
                raise Conflict(f"the name {request.name!r} is already taken by job {taken[:12]}"
                               "; remove that job or pick another name")
        return request

    def _launch(self, job_id: str, hostname: str, request: RunRequest, grant: Grant,
                to_acquire: Sequence[JobResource], t0: int, *, recorded_ns: int = 0) -> Job:
        """Acquire what is left, hand the (launched) PENDING job to the supervisor: RUNNING or FAILED."""
        try:
            grant = grant.merged(acquire_all(to_acquire, job_id, request))
        except Exception as exc:   # acquire_all gave back its own share; the rest was acquired before
            self._fail_start(job_id, exc, grant, release=[r for r in self.resources if r not in to_acquire])
            raise
        try:
            # The spec is built here, not earlier: an image's User may not be a numeric id (InvalidArgument).
            rec = self.supervisor.start(build_spec(job_id, hostname, self.jobs_dir / job_id, request, grant),
                                        submitted_ns=t0, recorded_ns=recorded_ns)
        except CapsaError as exc:
            self._fail_start(job_id, exc, grant, release=self.resources)
            if _is_command_not_found(exc):
                return self.get(job_id)
            raise
        self.store.mark_running(job_id, rec, time.monotonic_ns() - t0, grant.recorded)
        self.events.safe_record("job", "started", job_id, name=request.name, attributes={"pid": rec.pid})
        if request.timeout:
            self.timers_changed.set()
        return self._by_id(job_id)

    def _by_id(self, job_id: str) -> Job:
        """The job with exactly this id, as :meth:`get` shows it, without resolving a name or prefix first."""
        job = self.store.by_id(job_id)
        if job is None:
            raise NotFound(f"no such job: {job_id}")
        return self._shown(job)

    def _fail_start(self, job_id: str, exc: Exception, grant: Grant | None = None, *,
                    release: Sequence[JobResource]) -> None:
        """FAILED with the reason (and what its resources said), then give back ``release``."""
        self.store.fail_start(job_id, str(exc), grant.recorded if grant else None)
        release_all(release, job_id)
        self._notify(job_id)

    def _release(self, job_id: str, job: Job | None = None) -> None:
        """Give back what ``job_id`` borrowed. With its row at hand, a resource that lends only to
        requests asking for it (``JobResource.lends_only_when_asked``) is skipped when the row shows no
        such ask: releasing host networking still lists the firewall's rules (a subprocess), which at a
        hundred exits a second was the largest cost of the exit path (ADR-0017)."""
        resources = self.resources if job is None else [r for r in self.resources if not _not_borrowed(r, job)]
        release_all(resources, job_id)

    # -- schedules, cancel, timeouts (timing lives in capsa.jobs.schedule.Scheduler) ------------------
    def claim_due(self, now_ns: int) -> list[str]:
        """Move due SCHEDULED jobs to PENDING; each is claimed by exactly one caller."""
        return self.store.claim_due(self.schedules.due(now_ns))

    def start_claimed(self, job_id: str) -> Job:
        """Start a claimed (now PENDING) scheduled job with its stored request and unsealed secrets.

        Until the launch is claimed (one guarded UPDATE) a cancel wins and the job never runs;
        after it, the job runs and a cancel is refused.
        """
        t0 = time.monotonic_ns()
        job = self.get(job_id)
        grant: Grant | None = None
        try:
            taken = self.schedules.take(job_id)
            if taken is None:
                raise FailedPrecondition("its schedule record is missing")
            request, sealed = taken
            if sealed:
                request = dataclasses.replace(request, secret_env=self._secrets.open(sealed))
            ordered = sorted(self.resources, key=lambda r: not r.before_record)
            grant = acquire_all(ordered, job_id, request)
            if grant.image_config is not None:
                request = apply_image_config(request, grant.image_config)
        except CapsaError as exc:   # a failed acquire_all gave back its own share
            self._fail_start(job_id, exc, release=self.resources if grant is not None else ())
            return self.get(job_id)
        if not self.store.claim_launch(job_id, request, grant.recorded):
            self._release(job_id)   # canceled while its resources were acquired: it never runs
            self._notify(job_id)
            return self.get(job_id)
        return self._launch(job_id, job.hostname, request, grant, (), t0)

    def cancel(self, id_or_prefix: str) -> Job:
        """SCHEDULED (or claimed, not yet launched) -> CANCELED; a running job is stopped with ``stop``."""
        job = self.get(id_or_prefix)
        if self.store.cancel(job.id):
            # Nothing to release here: a claimed job's starter releases what it acquired when its
            # launch claim fails, after its last acquire.
            self._notify(job.id)
            return self.get(job.id)
        job = self.get(job.id)
        if job.state == JobState.CANCELED:
            return job
        if job.state == JobState.PENDING:
            raise Conflict(f"job {job.short_id} is already starting: only jobs not yet handed to the supervisor"
                           " can be canceled; use `capsa stop`")
        raise Conflict(f"job {job.short_id} is {job.state.value}: only SCHEDULED or PENDING jobs can be canceled"
                       + ("; use `capsa stop` for a running job" if job.state == JobState.RUNNING else ""))

    def expired_timeouts(self, now_ns: int) -> list[str]:
        return self.store.expired_timeouts(now_ns)

    def next_timeout_ns(self) -> int | None:
        return self.store.next_timeout_ns()

    def time_out(self, job_id: str) -> None:
        """Stop a job that ran past its timeout; its exit is then recorded as TIMEOUT."""
        if self.store.mark_timed_out(job_id):
            with contextlib.suppress(CapsaError):
                self.supervisor.stop(job_id, self.stop_grace_s)

    # -- queries ------------------------------------------------------------------------------
    def resolve_id(self, id_or_prefix: str) -> str:
        return self.store.resolve_id(id_or_prefix)

    def get(self, id_or_prefix: str) -> Job:
        return self._shown(self.store.get(id_or_prefix))

    def _shown(self, job: Job) -> Job:
        """``job``'s row as callers see it: with its restart bookkeeping and, while live, the log's drop count."""
        job = self._with_restarts([job])[0]
        if job.live:   # recorded at exit; while it runs the log directory's count is the news
            from capsa.logs._format import read_dropped

            job.log_dropped_bytes = max(job.log_dropped_bytes, read_dropped(self.jobs_dir / job.id / "logs"))
        return job

    def running_names(self) -> list[tuple[str, str]]:
        """(id, name) of the RUNNING jobs: what the metrics sampler visits each second, without the rows."""
        return self.store.running_names()

    def list(self, *, all: bool = False) -> list[Job]:
        return self.page(all=all).jobs

    def page(self, *, all: bool = False, limit: int = 0, page_token: str = "",
             filter: JobFilter | None = None) -> JobPage:
        """Jobs newest first, ``limit`` at a time (0: all); pass ``next_page_token`` back for the next page."""
        page = self.store.page(all=all, limit=limit, page_token=page_token, filter=filter)
        return dataclasses.replace(page, jobs=self._with_restarts(page.jobs))

    def page_entries(self, *, all: bool = False, limit: int = 0, page_token: str = "",
                     filter: JobFilter | None = None) -> tuple[list[PageEntry], str]:
        """:meth:`page` as (id, rev, state, created_ns) entries and the next page token: a listing that
        kept what it built for an (id, rev) reads only the rows that changed since (capsa.api.joblist)."""
        return self.store.page_entries(all=all, limit=limit, page_token=page_token, filter=filter)

    def restart_info(self, job_ids: list[str]) -> dict[str, tuple[str, int, int]]:
        """(policy, restart count, next restart ns) of the jobs that have a policy: kept apart from the row."""
        return self.restarts.info(job_ids)

    def get_many(self, job_ids: list[str]) -> dict[str, tuple[int, Job]]:
        """(rev, job) by exact id, as :meth:`page` shows them; ids deleted meanwhile are absent."""
        found = self.store.get_many(job_ids)
        self._with_restarts([job for _rev, job in found.values()])
        return found

    def _with_restarts(self, jobs: list[Job]) -> list[Job]:
        info = self.restarts.info([job.id for job in jobs])
        for job in jobs:
            if job.id in info:
                job.restart_policy, job.restart_count, job.next_restart_ns = info[job.id]
        return jobs

    def count_by_state(self) -> dict[str, int]:
        return self.store.count_by_state()

    # -- stop / delete -----------------------------------------------------------------------------
    def stop(self, id_or_prefix: str, grace_s: float | None = None) -> Job:
        job = self.get(id_or_prefix)
        # A stopped job is never restarted, including one that ended and waits for its restart.
        if self.restarts.end(job.id):
            job = self.get(job.id)
        if job.state.ended:
            return job
        if job.state == JobState.SCHEDULED:
            return self.cancel(job.id)
        grace = self.stop_grace_s if grace_s is None else max(0.0, grace_s)   # 0: SIGKILL at once, as docker stop -t 0
        self.store.request_stop(job.id)
        self.supervisor.stop(job.id, grace)
        return self.wait_ended(job.id, timeout=grace + 15)

    def remove(self, id_or_prefix: str, *, force: bool = False) -> str:
        job = self.get(id_or_prefix)
        self.restarts.end(job.id)
        if force and job.state == JobState.SCHEDULED:
            job = self.cancel(job.id)
        if not job.state.ended:
            if not force:
                raise Conflict(f"job {job.short_id} is {job.state.value}; stop it first or use --force")
            self.store.request_stop(job.id)
            self.supervisor.stop(job.id, 0)
            self.wait_ended(job.id, timeout=15)
        with contextlib.suppress(CapsaError):
            self.supervisor.forget(job.id)
        release_all(self.resources, job.id, discard=True)
        shutil.rmtree(self.jobs_dir / job.id, ignore_errors=True)
        with self.db.tx() as conn:
            self.store.delete(job.id)
            self.events.record("job", "removed", job.id, name=job.name, conn=conn)
        self.restarts.delete(job.id)
        return job.id

    # -- restarts (policy and backoff: capsa.jobs.restart; timing: the Scheduler) ---------------------
    def _after_run(self, job_id: str, job: Job | None = None) -> None:
        """A run ended: schedule the next one when the job's restart policy asks for it. ``job``: its row
        as read after the exit was recorded (read here when not given)."""
        try:
            job = job or self.store.by_id(job_id)
            if job is None or not job.state.ended:
                return
            ran_s = max(0, job.ended_ns - job.started_ns) / 1e9 if job.started_ns else 0.0
            if self.restarts.decide(job_id, job.state, ran_s) is not None:
                self.timers_changed.set()
        except (sqlite3.Error, CapsaError):   # the row was deleted meanwhile, or the disk is full
            log.exception("deciding on a restart of job %s failed", job_id)

    def claim_due_restarts(self, now_ns: int) -> list[str]:
        return self.restarts.due(now_ns)

    def next_restart_ns(self) -> int | None:
        return self.restarts.next_due_ns()

    def restart_claimed(self, job_id: str) -> Job | None:
        """Start the next run of a job whose restart is due: same id, row and log, every resource re-acquired.

        The claim (one transaction: the restart row and the job back to PENDING) is taken by exactly
        one caller, and never after `capsa stop` ended the policy. None when it was not due any more.
        """
        t0 = time.monotonic_ns()
        before = self.store.get(job_id)
        with self.db.tx() as conn:
            count = self.restarts.claim(conn, job_id)
            if count is None:
                return None
            moved = conn.execute(
                "UPDATE jobs SET state = 'PENDING', exit_code = NULL, signal = 0, reason = '', ended_ns = 0,"
                " pid = 0, started_ns = 0, stop_requested = 0, timed_out = 0, launched = 1, log_incomplete_bytes = 0"
                " WHERE id = ? AND state IN ('COMPLETED', 'FAILED')", (job_id,)).rowcount
            if not moved:
                raise Conflict(f"job {before.short_id} is {before.state.value}: not restarted")
        row = self.restarts.get(job_id)
        assert row is not None   # claimed above; only delete() removes it, after ending the policy
        request = request_from_json(row["request"])
        if row["sealed_secrets"]:
            request = dataclasses.replace(request, secret_env=self._secrets.open(row["sealed_secrets"]))
        code = "" if before.exit_code is None else f", exit code {before.exit_code}"
        with contextlib.suppress(CapsaError, OSError):   # a missing marker must not keep the job down
            from capsa.logs.reopen import mark_restart

            mark_restart(self.jobs_dir / job_id / "logs",
                         f"capsa: restart {count} (policy {row['mode']}): the previous run ended"
                         f" {before.state.value}{code}")
        log.info("restarting job %s (restart %d)", job_id, count)
        grant: Grant | None = None
        try:
            grant = acquire_all(sorted(self.resources, key=lambda r: not r.before_record), job_id, request)
            if grant.image_config is not None:
                request = apply_image_config(request, grant.image_config)
        except CapsaError as exc:   # a failed acquire_all gave back its own share
            self._fail_start(job_id, exc, release=self.resources if grant is not None else ())
            self._after_run(job_id)
            return self.get(job_id)
        try:
            return self._launch(job_id, before.hostname, request, grant, (), t0)
        except CapsaError:   # the job is FAILED with the reason; its policy decides on the next run
            self._after_run(job_id)
            return self.get(job_id)

    # -- exits ------------------------------------------------------------------------------------
    def on_supervisor_event(self, event: ExitEvent) -> None:
        self._record_exit(event.job)

    def _record_exit(self, rec: JobRecord) -> None:
        try:
            self.store.record_exit(rec)
        except (sqlite3.Error, CapsaError) as exc:
            # The database refused even after its own retries (a full disk): keep the event and
            # retry it from the scheduler's chore, so the job never stays RUNNING for good. The
            # supervisor keeps the record too until it is forgotten, which happens only below.
            with self._pending_lock:
                first = not self._pending_exits
                self._pending_exits[rec.job_id] = rec
            if first:
                log.error("recording the exit of job %s failed (%s); retrying until the database accepts it",
                          rec.job_id, exc)
            return
        from capsa.logs._format import read_dropped

        # The log directory's count is final once the log is (exit events wait for that); the record's may not be.
        dropped = max(rec.log_dropped_bytes, read_dropped(self.jobs_dir / rec.job_id / "logs"))
        if dropped:
            with contextlib.suppress(sqlite3.Error, CapsaError):   # a count, not a state: never blocks the exit
                self.db.execute("UPDATE jobs SET log_dropped_bytes = ? WHERE id = ?", (dropped, rec.job_id))
        try:
            job: Job | None = self.store.by_id(rec.job_id)
        except (sqlite3.Error, CapsaError):
            job = None
        self._release(rec.job_id, job)
        with contextlib.suppress(CapsaError):   # not waited for: the answer changes nothing here
            self.supervisor.forget(rec.job_id, wait=False)
        self._after_run(rec.job_id, job)
        self._notify(rec.job_id, job)

    def retry_pending_exits(self) -> int:
        """Record exits the database refused earlier; returns how many are still pending."""
        with self._pending_lock:
            pending, self._pending_exits = self._pending_exits, {}
        for rec in pending.values():
            self._record_exit(rec)
        with self._pending_lock:
            left = len(self._pending_exits)
        if pending and not left:
            log.info("recorded %d delayed job exit(s)", len(pending))
        return left

    def _notify(self, job_id: str = "", job: Job | None = None) -> None:
        """Wake the waiters; ``job_id`` ended just now: record its event (an --rm job is then removed
        after the linger). ``job``: its row as read after the end was recorded, if at hand."""
        with self._ended:
            self._ended.notify_all()
        if job_id:
            with contextlib.suppress(CapsaError, sqlite3.Error):
                job = job or self.store.by_id(job_id)
                if job is None:   # removed meanwhile
                    return
                self._ended_event(job)
                if job.auto_remove:
                    self.auto_removal.ended(job_id)

    def _ended_event(self, job: Job) -> None:
        action = {JobState.STOPPED: "stopped", JobState.CANCELED: "canceled", JobState.TIMEOUT: "timeout"}.get(
            job.state, "oom" if job.reason == "OOM killed" else "exited")
        if job.state.ended:
            self.events.safe_record("job", action, job.id, name=job.name, attributes={
                "state": job.state.value, "exit_code": "" if job.exit_code is None else job.exit_code,
                "reason": job.reason})

    def hold(self, job_id: str) -> contextlib.AbstractContextManager[None]:
        """Keep an --rm job while an attached reader needs it (its removal waits for the last one)."""
        return self.auto_removal.hold(job_id)

    def wait_ended(self, job_id: str, timeout: float | None = None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ended:
            while True:
                job = self.get(job_id)
                if job.state.ended:
                    return job
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return job
                self._ended.wait(0.5 if remaining is None else min(0.5, remaining))

    # -- logs -------------------------------------------------------------------------------------
    def logs(self, id_or_prefix: str, *, follow: bool = False, from_seq: int = 1,
             stop: threading.Event | None = None) -> Iterator[LogChunk]:
        job = self.get(id_or_prefix)
        log_dir = self.jobs_dir / job.id / "logs"
        if not follow and not log_dir.exists():
            return
        # A job that ended without an end marker (lost while the supervisor was down) has
        # nothing more coming: following it would wait forever.
        live = follow and not (job.state.ended and not _finished(log_dir))
        # 20 ms polls: an attached `capsa run` of a short job ends that much sooner, for one stat per poll.
        yield from read_log(log_dir, from_seq=max(1, from_seq), follow=live, stop=stop, poll_interval=0.02)
        if follow:
            # The log's end marker can beat the exit event by a few ms; callers read the
            # exit code right after the stream ends, so let the database catch up first.
            self.wait_ended(job.id, timeout=10)


def _not_borrowed(resource: JobResource, job: Job) -> bool:
    """``resource`` says it lends only to requests that ask for it, and ``job``'s row shows no such ask."""
    return bool(getattr(resource, "lends_only_when_asked", False)) and hasattr(job, resource.serves) \
        and not asks_for(job, resource.serves)   # type: ignore[arg-type]   # a Job records the same fields


def _kill_cgroup(job_id: str) -> None:
    with contextlib.suppress(Exception):   # no cgroup left is the usual case
        cg = cgroups.detect().open(job_id)
        cg.kill_all()
        cg.remove()


def _caller_root(rootfs: JobRootfs) -> Grant:
    """A root the caller prepared and keeps owning: mounted as the job's root, never released here."""
    from capsa.runtime.spec import MountSpec

    return Grant(root_mounts=tuple(MountSpec(m.type, m.source, tuple(m.options)) for m in rootfs.mounts),
                 recorded={"image": rootfs.image.ref, "image_digest": rootfs.image.digest})


def _finished(log_dir: Path) -> bool:
    from capsa.logs import is_finished

    return is_finished(log_dir)
