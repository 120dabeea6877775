"""Job lifecycle: submit, start, stop, delete, logs, and reconciliation after restarts.

The database is the source of truth for what the daemon promised; the
supervisor is the source of truth for what is actually running. Every state
change is a guarded UPDATE (``WHERE state IN (...)``) so an exit event racing a
start reply, or a restart replaying events, can never move a job backwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capsa.errors import CapsaError, Conflict, FailedPrecondition, InvalidArgument, NotFound
from capsa.jobs.attachments import Acquired, JobAttachments
from capsa.jobs.model import ACTIVE_STATES, LISTED_STATES, MIGRATIONS, Job, JobState, RunRequest
from capsa.jobs.schedule import ScheduleStore, parse_duration, parse_start_time
from capsa.jobs.secrets import SecretBox, validate_env_names
from capsa.jobs.uploads import UploadLimits, UploadStore
from capsa.logs import LogChunk, read_log
from capsa.runtime import cgroups
from capsa.runtime.client import SupervisorClient, ensure_supervisor
from capsa.runtime.gpu import library_binds
from capsa.runtime.protocol import ExitEvent, JobRecord, ProcState
from capsa.runtime.spec import JobSpec, MountSpec, ResourceSpec
from capsa.state import Database

if TYPE_CHECKING:
    from capsa.capsules.manager import CapsuleManager
    from capsa.images.service import ImageService, JobRootfs

__all__ = ["JobService"]

log = logging.getLogger("capsa.jobs")

_ID_PREFIX = re.compile(r"^[0-9a-f]{1,32}$")


class JobService:
    def __init__(self, db: Database, home: Path, supervisor: SupervisorClient, *,
                 stop_grace_s: float = 10.0, images: ImageService | None = None,
                 upload_limits: UploadLimits | None = None, attachments: JobAttachments | None = None) -> None:
        self.db = db
        self.images = images
        self.attachments = attachments or JobAttachments(None, None)
        self.home = home
        self.jobs_dir = home / "jobs"
        self.supervisor = supervisor
        self.stop_grace_s = stop_grace_s
        self._ended = threading.Condition()
        db.migrate("jobs", MIGRATIONS)
        self.uploads = UploadStore(home / "tmp" / "uploads", upload_limits)
        self.schedules = ScheduleStore(db)
        self.secret_box = SecretBox(home)
        self.timers_changed = threading.Event()   # a schedule or timeout was added (the Scheduler waits on it)
        self.capsules: CapsuleManager | None = None   # set by the daemon; `run --capsule` needs it
        self.runtime_image: Callable[[str], str] | None = None   # NAME[@VERSION] -> image (capsa.runtimes)

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
                ensure_supervisor(self.home)
                self.attach_supervisor()
                return
            except (CapsaError, OSError) as exc:
                log.error("restarting the supervisor failed: %s (retrying in %.1fs)", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def reconcile(self) -> None:
        known = {rec.job_id: rec for rec in self.supervisor.list()}
        for row in self.db.query(
            f"SELECT * FROM jobs WHERE state IN ({','.join('?' * len(ACTIVE_STATES))})", ACTIVE_STATES
        ):
            job = Job.from_row(row)
            rec = known.get(job.id)
            if rec is None:
                self._fail_lost(job)
            elif rec.state == ProcState.EXITED:
                self._record_exit(rec)
            elif rec.state == ProcState.RUNNING:
                self.db.execute("UPDATE jobs SET state = ?, pid = ? WHERE id = ? AND state IN ('PENDING','RUNNING')",
                                (JobState.RUNNING.value, rec.pid, job.id))
        # Exits the supervisor holds for jobs the database already closed.
        for _job_id, rec in known.items():
            if rec.state == ProcState.EXITED:
                self._record_exit(rec)

    def _fail_lost(self, job: Job) -> None:
        reason = ("lost: the job's supervisor was gone when the daemon restarted or reconnected"
                  if job.state == JobState.RUNNING else "the daemon restarted before the job started")
        with contextlib.suppress(Exception):
            cg = cgroups.detect().open(job.id)
            cg.kill_all()
            cg.remove()
        self.db.execute(
            "UPDATE jobs SET state = ?, reason = ?, ended_ns = ?, exit_code = COALESCE(exit_code, -1)"
            " WHERE id = ? AND state IN ('PENDING','RUNNING')",
            (JobState.FAILED.value, reason, time.time_ns(), job.id),
        )
        if self.images is not None:
            self.images.job_ended(job.id)
        self.attachments.release(job.id)
        self._notify()

    # -- run -------------------------------------------------------------------------------
    def run(self, request: RunRequest, *, rootfs: JobRootfs | None = None) -> Job:
        """Submit a job. ``rootfs``: a root the caller prepared and owns (runtime build jobs)."""
        t0 = time.monotonic_ns()
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
        _validate_resources(request)
        _validate_hardening(request)
        self.attachments.validate(request.network, request.volumes, request.gpus)
        if request.capsules:   # resolved now, so a conflict fails the request rather than a job
            self._capsules().plan_start(request.capsules, image=bool(request.image))
        validate_env_names(request.env, request.secret_env)
        timeout_ns = int(parse_duration(request.timeout, what="--timeout") * 1e9) if request.timeout else 0
        start_ns = parse_start_time(request.schedule) if request.schedule else 0
        job_id = secrets.token_hex(16)
        hostname = job_id[:12]
        if request.image and not start_ns and rootfs is None:  # a scheduled job resolves its image when it starts
            if self.images is None:
                raise InvalidArgument("this daemon has no image support configured")
            rootfs = self.images.rootfs_for_job(request.image, job_id, pull=request.pull)
            request = _apply_image_config(request, rootfs.image.run_config)
        if request.upload_session:   # before the job exists: the tree becomes its /work
            self.uploads.claim(request.upload_session, self.jobs_dir / job_id / "work")
        workdir = request.workdir or "/work"
        state = JobState.SCHEDULED if start_ns else JobState.PENDING
        with self.db.tx() as conn:
            conn.execute(
                "INSERT INTO jobs(id, name, command, state, env, workdir, resources, created_ns, hostname,"
                " image, image_digest, workflow_id, workflow_job) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (job_id, request.name, json.dumps(list(request.command)), state.value,
                 json.dumps(request.env), workdir, json.dumps(request.resources.to_dict()), time.time_ns(),
                 hostname, rootfs.image.ref if rootfs else "", rootfs.image.digest if rootfs else "",
                 request.workflow_id, request.workflow_job),
            )
            conn.execute("UPDATE jobs SET scheduled_ns = ?, timeout_ns = ?, secret_env_keys = ?,"
                         " image = CASE WHEN image = '' THEN ? ELSE image END WHERE id = ?",
                         (start_ns, timeout_ns, json.dumps(sorted(request.secret_env)), request.image, job_id))
            conn.execute("UPDATE jobs SET seccomp = ?, network = ?, volumes = ?, gpus = ? WHERE id = ?",
                         (request.seccomp, request.network, json.dumps(list(request.volumes)), request.gpus,
                          job_id))
            if start_ns:
                sealed = self.secret_box.seal(request.secret_env) if request.secret_env else None
                self.schedules.add(conn, job_id, start_ns, request, sealed)
        if start_ns:
            self.timers_changed.set()
            return self.get(job_id)
        return self._launch(job_id, hostname, request, rootfs, t0)

    def _launch(self, job_id: str, hostname: str, request: RunRequest, rootfs: JobRootfs | None, t0: int) -> Job:
        """Start a PENDING job on the supervisor; RUNNING, FAILED, or stopped again if canceled meanwhile."""
        try:
            acquired = self.attachments.acquire(job_id, request.network, request.volumes, request.gpus)
        except CapsaError as exc:
            self._fail_start(job_id, exc)
            raise
        if acquired.ip:
            self.db.execute("UPDATE jobs SET ip = ? WHERE id = ?", (acquired.ip, job_id))
        if acquired.gpu_names:
            self.db.execute("UPDATE jobs SET gpu_devices = ? WHERE id = ?", (json.dumps(acquired.gpu_names), job_id))
        spec = self._spec(job_id, hostname, request, rootfs, acquired)
        try:
            if request.capsules:   # recorded (the lease capsule gc respects) before the job mounts them
                spec = dataclasses.replace(spec, binds=spec.binds + self._capsules().prepare_start(
                    job_id, request.capsules, image=rootfs is not None))
            rec = self.supervisor.start(spec)
        except CapsaError as exc:
            self.attachments.release(job_id)
            self._release_capsules(job_id)
            self.db.execute(
                "UPDATE jobs SET state = ?, reason = ?, ended_ns = ?, exit_code = COALESCE(exit_code, 127)"
                " WHERE id = ? AND state = 'PENDING'",
                (JobState.FAILED.value, f"start failed: {exc}", time.time_ns(), job_id),
            )
            self._notify()
            if exc.code in ("not_found", "failed_precondition") and "exec" in str(exc):
                return self.get(job_id)  # the command itself could not be run: a job that failed, exit 127
            raise
        latency = time.monotonic_ns() - t0
        started = self.db.execute(
            "UPDATE jobs SET state = ?, pid = ?, started_ns = ?, cgroup = ?, start_latency_ns = ?"
            " WHERE id = ? AND state = 'PENDING'",
            (JobState.RUNNING.value, rec.pid, rec.started_ns, rec.cgroup, latency, job_id),
        ).rowcount
        self.db.execute("UPDATE jobs SET start_latency_ns = ? WHERE id = ?", (latency, job_id))
        if not started and self.get(job_id).state == JobState.CANCELED:
            with contextlib.suppress(CapsaError):   # canceled while it was starting
                self.supervisor.stop(job_id, 0)
        if request.timeout:
            self.timers_changed.set()
        return self.get(job_id)

    # -- schedules, cancel, timeouts (timing lives in capsa.jobs.schedule.Scheduler) ------------------
    def claim_due(self, now_ns: int) -> list[str]:
        """Move due SCHEDULED jobs to PENDING; each is claimed by exactly one caller."""
        return [job_id for job_id in self.schedules.due(now_ns) if self.db.execute(
            "UPDATE jobs SET state = ? WHERE id = ? AND state = 'SCHEDULED'",
            (JobState.PENDING.value, job_id)).rowcount]

    def start_claimed(self, job_id: str) -> Job:
        """Start a claimed (now PENDING) scheduled job with its stored request and unsealed secrets."""
        t0 = time.monotonic_ns()
        job = self.get(job_id)
        try:
            taken = self.schedules.take(job_id)
            if taken is None:
                raise FailedPrecondition("its schedule record is missing")
            request, sealed = taken
            if sealed:
                request = dataclasses.replace(request, secret_env=self.secret_box.open(sealed))
            rootfs = None
            if request.image:
                if self.images is None:
                    raise InvalidArgument("this daemon has no image support configured")
                rootfs = self.images.rootfs_for_job(request.image, job_id, pull=request.pull)
                request = _apply_image_config(request, rootfs.image.run_config)
                self.db.execute("UPDATE jobs SET command = ?, env = ?, workdir = ?, image = ?, image_digest = ?"
                                " WHERE id = ?", (json.dumps(list(request.command)), json.dumps(request.env),
                                                  request.workdir or "/work", rootfs.image.ref, rootfs.image.digest,
                                                  job_id))
        except CapsaError as exc:
            self.db.execute("UPDATE jobs SET state = ?, reason = ?, ended_ns = ?,"
                            " exit_code = COALESCE(exit_code, 127) WHERE id = ? AND state = 'PENDING'",
                            (JobState.FAILED.value, f"start failed: {exc}", time.time_ns(), job_id))
            self._notify()
            return self.get(job_id)
        return self._launch(job_id, job.hostname, request, rootfs, t0)

    def cancel(self, id_or_prefix: str) -> Job:
        """SCHEDULED or PENDING -> CANCELED (a running job is stopped with ``stop`` instead)."""
        job = self.get(id_or_prefix)
        if self.db.execute(
            "UPDATE jobs SET state = ?, reason = ?, ended_ns = ? WHERE id = ? AND state IN ('SCHEDULED','PENDING')",
            (JobState.CANCELED.value, "canceled by user", time.time_ns(), job.id),
        ).rowcount:
            self.schedules.drop(job.id)
            self._notify()
            return self.get(job.id)
        job = self.get(job.id)
        if job.state == JobState.CANCELED:
            return job
        raise Conflict(f"job {job.short_id} is {job.state.value}: only SCHEDULED or PENDING jobs can be canceled"
                       + ("; use `capsa stop` for a running job" if job.state == JobState.RUNNING else ""))

    def expired_timeouts(self, now_ns: int) -> list[str]:
        rows = self.db.query("SELECT id FROM jobs WHERE state = 'RUNNING' AND timeout_ns > 0 AND timed_out = 0"
                             " AND started_ns > 0 AND started_ns + timeout_ns <= ?", (now_ns,))
        return [str(r["id"]) for r in rows]

    def next_timeout_ns(self) -> int | None:
        row = self.db.query_one("SELECT MIN(started_ns + timeout_ns) AS due FROM jobs WHERE state = 'RUNNING'"
                                " AND timeout_ns > 0 AND timed_out = 0 AND started_ns > 0")
        return None if row is None or row["due"] is None else int(row["due"])

    def time_out(self, job_id: str) -> None:
        """Stop a job that ran past its timeout; its exit is then recorded as TIMEOUT."""
        if self.db.execute("UPDATE jobs SET timed_out = 1 WHERE id = ? AND state = 'RUNNING' AND timed_out = 0",
                           (job_id,)).rowcount:
            with contextlib.suppress(CapsaError):
                self.supervisor.stop(job_id, self.stop_grace_s)

    def count_by_state(self) -> dict[str, int]:
        rows = self.db.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {str(r["state"]): int(r["n"]) for r in rows}

    def _capsules(self) -> CapsuleManager:
        if self.capsules is None:
            raise InvalidArgument("this daemon has no capsule support configured")
        return self.capsules

    def _release_capsules(self, job_id: str) -> None:
        if self.capsules is not None:
            self.capsules.release_job(job_id)   # never raises

    def _fail_start(self, job_id: str, exc: CapsaError) -> None:
        self.db.execute(
            "UPDATE jobs SET state = ?, reason = ?, ended_ns = ?, exit_code = COALESCE(exit_code, 127)"
            " WHERE id = ? AND state = 'PENDING'",
            (JobState.FAILED.value, f"start failed: {exc}", time.time_ns(), job_id),
        )
        self._notify()

    def _spec(self, job_id: str, hostname: str, request: RunRequest, rootfs: JobRootfs | None,
              acquired: Acquired | None = None) -> JobSpec:
        r = request.resources
        uid, gid = _parse_user(request.user)
        return JobSpec(
            job_id=job_id,
            argv=tuple(request.command),
            # GPU variables first: the user may narrow CUDA_VISIBLE_DEVICES, the device cgroup decides anyway
            env={**(acquired.env if acquired else {}), **request.env, **request.secret_env},
            hostname=hostname,
            job_dir=str(self.jobs_dir / job_id),
            workdir=request.workdir or "/work",
            root_mounts=tuple(MountSpec(m.type, m.source, tuple(m.options)) for m in rootfs.mounts) if rootfs else (),
            uid=uid,
            gid=gid,
            seccomp=request.seccomp,
            netns_path=acquired.netns_path if acquired else None,
            binds=acquired.binds + library_binds(acquired.gpu_libraries, host_root=rootfs is None) if acquired else (),
            devices=acquired.devices if acquired else (),
            device_allow=acquired.device_allow if acquired else (),
            resources=ResourceSpec(
                cpu_percent=r.max_cpu or None,
                cpuset=r.cpu_cores or None,
                memory_bytes=r.max_memory_mb * 1024 * 1024 if r.max_memory_mb else None,
                io_bps=r.max_iobps or None,
                pids_max=r.max_pids or None,
            ),
        )

    # -- queries ------------------------------------------------------------------------------
    def resolve_id(self, id_or_prefix: str) -> str:
        key = id_or_prefix.strip().lower()
        if not _ID_PREFIX.match(key):
            raise InvalidArgument(f"invalid job id {id_or_prefix!r}: expected hexadecimal characters")
        rows = self.db.query("SELECT id FROM jobs WHERE id LIKE ? LIMIT 3", (key + "%",))
        if not rows:
            raise NotFound(f"no such job: {id_or_prefix}")
        if len(rows) > 1:
            raise InvalidArgument(f"job id prefix {id_or_prefix!r} is ambiguous: it matches several jobs")
        return str(rows[0]["id"])

    def get(self, id_or_prefix: str) -> Job:
        job_id = self.resolve_id(id_or_prefix)
        row = self.db.query_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise NotFound(f"no such job: {id_or_prefix}")
        return Job.from_row(row)

    def list(self, *, all: bool = False) -> list[Job]:
        if all:
            rows = self.db.query("SELECT * FROM jobs ORDER BY created_ns DESC")
        else:
            rows = self.db.query(
                f"SELECT * FROM jobs WHERE state IN ({','.join('?' * len(LISTED_STATES))}) ORDER BY created_ns DESC",
                LISTED_STATES,
            )
        return [Job.from_row(r) for r in rows]

    # -- stop / delete -----------------------------------------------------------------------------
    def stop(self, id_or_prefix: str, grace_s: float | None = None) -> Job:
        job = self.get(id_or_prefix)
        if job.state.ended:
            return job
        if job.state == JobState.SCHEDULED:
            return self.cancel(job.id)
        grace = self.stop_grace_s if grace_s is None or grace_s <= 0 else grace_s
        self.db.execute("UPDATE jobs SET stop_requested = 1 WHERE id = ?", (job.id,))
        self.supervisor.stop(job.id, grace)
        return self.wait_ended(job.id, timeout=grace + 15)

    def delete(self, id_or_prefix: str, *, force: bool = False) -> str:
        job = self.get(id_or_prefix)
        if force and job.state == JobState.SCHEDULED:
            job = self.cancel(job.id)
        if not job.state.ended:
            if not force:
                raise Conflict(f"job {job.short_id} is {job.state.value}; stop it first or use --force")
            self.db.execute("UPDATE jobs SET stop_requested = 1 WHERE id = ?", (job.id,))
            self.supervisor.stop(job.id, 0)
            self.wait_ended(job.id, timeout=15)
        with contextlib.suppress(CapsaError):
            self.supervisor.forget(job.id)
        if self.images is not None:
            self.images.job_removed(job.id)
        self.attachments.release(job.id)
        self._release_capsules(job.id)
        shutil.rmtree(self.jobs_dir / job.id, ignore_errors=True)
        self.db.execute("DELETE FROM jobs WHERE id = ?", (job.id,))
        return job.id

    # -- exits ------------------------------------------------------------------------------------
    def on_supervisor_event(self, event: ExitEvent) -> None:
        self._record_exit(event.job)

    def _record_exit(self, rec: JobRecord) -> None:
        row = self.db.query_one("SELECT stop_requested, timed_out, timeout_ns FROM jobs WHERE id = ?",
                                (rec.job_id,))
        if row is not None:
            reason = rec.reason
            if reason.startswith("start failed") or rec.oom_killed:
                state = JobState.FAILED
            elif row["timed_out"]:
                state = JobState.TIMEOUT
                reason = f"timed out after {row['timeout_ns'] / 1e9:g}s"
            elif rec.stop_requested or row["stop_requested"]:
                state = JobState.STOPPED
                reason = reason or "stopped by user"
            elif rec.exit_code == 0:
                state = JobState.COMPLETED
            else:
                state = JobState.FAILED
            self.db.execute(
                "UPDATE jobs SET state = ?, exit_code = ?, signal = ?, reason = ?, ended_ns = ?,"
                " pid = CASE WHEN pid = 0 THEN ? ELSE pid END,"
                " started_ns = CASE WHEN started_ns = 0 THEN ? ELSE started_ns END"
                " WHERE id = ? AND state IN ('PENDING','RUNNING')",
                (state.value, rec.exit_code, rec.signal, reason, rec.ended_ns or time.time_ns(),
                 rec.pid, rec.started_ns, rec.job_id),
            )
        if self.images is not None:
            self.images.job_ended(rec.job_id)
        self.attachments.release(rec.job_id)
        self._release_capsules(rec.job_id)
        with contextlib.suppress(CapsaError):
            self.supervisor.forget(rec.job_id)
        self._notify()

    def _notify(self) -> None:
        with self._ended:
            self._ended.notify_all()

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


def _finished(log_dir: Path) -> bool:
    from capsa.logs import is_finished

    return is_finished(log_dir)


def _validate_resources(request: RunRequest) -> None:
    r = request.resources
    for name, value in (("--max-cpu", r.max_cpu), ("--max-memory", r.max_memory_mb), ("--max-iobps", r.max_iobps),
                        ("--max-pids", r.max_pids)):
        if value < 0:
            raise InvalidArgument(f"{name} must be zero (unlimited) or positive, got {value}")
    if r.cpu_cores and not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", r.cpu_cores):
        raise InvalidArgument(f"--cpu-cores {r.cpu_cores!r} is not a CPU list like '0-1' or '0,2'")
    if request.workdir and not request.workdir.startswith("/"):
        raise InvalidArgument(f"--workdir must be an absolute path inside the job, got {request.workdir!r}")


def _apply_image_config(request: RunRequest, config: dict[str, Any]) -> RunRequest:
    """Docker semantics: Entrypoint + (the given command, else Cmd); image Env under ours."""
    import dataclasses

    entrypoint = list(config.get("Entrypoint") or [])
    cmd = list(request.command) if request.command else list(config.get("Cmd") or [])
    argv = entrypoint + cmd if request.command_given or not request.command else list(request.command)
    if not argv:
        raise InvalidArgument(f"image {request.image} has no Entrypoint or Cmd: give a command after --")
    env: dict[str, str] = {}
    for item in config.get("Env") or []:
        key, _, value = str(item).partition("=")
        env[key] = value
    env.update(request.env)
    return dataclasses.replace(
        request, command=tuple(argv), env=env,
        workdir=request.workdir or str(config.get("WorkingDir") or "/"),
        user=request.user or str(config.get("User") or ""),
    )


def _validate_hardening(request: RunRequest) -> None:
    from capsa.runtime.security import PROFILE_NAMES

    if request.seccomp not in PROFILE_NAMES:
        raise InvalidArgument(f"--seccomp {request.seccomp!r}: expected one of {', '.join(PROFILE_NAMES)}")


def _parse_user(user: str) -> tuple[int, int]:
    if not user or user == "root":
        return 0, 0
    uid_text, _, gid_text = user.partition(":")
    try:
        uid = int(uid_text)
        gid = int(gid_text) if gid_text else uid
    except ValueError:
        raise InvalidArgument(f"user {user!r}: give a numeric UID[:GID] (names are not resolved)") from None
    if uid < 0 or gid < 0:
        raise InvalidArgument(f"user {user!r}: ids must not be negative")
    return uid, gid
