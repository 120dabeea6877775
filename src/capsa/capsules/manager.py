"""CapsuleManager: capsule versions into jobs — at start, live (attach, swap, detach), after restarts.

Every mount is read-only, nosuid, nodev, and is recorded before it is made:
:meth:`CapsuleStore.record_attach` writes the lease that gc respects, then the
mount happens, and :meth:`CapsuleStore.record_detach` runs after an unmount or
a failed mount. A swap records the new version, swaps, then forgets the old one.

* **At start** (``capsa run --capsule NAME@SPEC[:PATH]``): the requests are
  resolved together with the store's resolver (dependencies included), each
  member is recorded, and the job's spec gets one read-only bind per member, at
  ``/capsules/NAME`` or the requested path.
* **Live** (``capsa capsule attach/swap/detach``): the daemon never forks or
  changes namespace; it asks the supervisor, which hands the job's pidfd to the
  single-threaded zygote, which runs :mod:`capsa.runtime.mounts`. Targets are
  resolved inside the job's root without following any symlink.
* **Consistency**: a job holds at most one version of each capsule, and what it
  holds always satisfies every holder's dependencies: attach resolves together
  with what the job already has; swap and detach refuse to break a dependency.
* **Restart** (:meth:`reconcile`): attachments of jobs that are gone are
  released; for a running job each recorded target is checked in the job's
  ``mountinfo``: an interrupted swap is finished in the database, a missing mount
  is made again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from capsa.capsules.model import Attachment, CapsuleVersion
from capsa.capsules.resolver import resolve
from capsa.capsules.store import CapsuleStore
from capsa.capsules.versions import check_name, parse_reference, parse_requirement, parse_version, satisfies
from capsa.errors import CapsaError, Conflict, FailedPrecondition, InvalidArgument, NotFound
from capsa.runtime import mounts
from capsa.runtime.client import SupervisorClient
from capsa.runtime.protocol import ProcState
from capsa.runtime.spec import BindSpec

if TYPE_CHECKING:
    from capsa.jobs.model import Job

__all__ = [
    "CAPSULES_DIR",
    "CapsuleManager",
    "CapsuleRequest",
    "JobLookup",
    "MountChange",
    "ReconcileReport",
    "parse_capsule_request",
]

log = logging.getLogger("capsa.capsules")

CAPSULES_DIR = "/capsules"
# First path components of a job root that capsa builds itself (or that hold the user's
# files, which may be symlinks): a start-time bind there could be walked out of the root.
_BUILT_IN = frozenset({"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "proc", "dev", "sys",
                       "tmp", "work"})
_SPEC_OPERATORS = ("=", "<", ">", "!", "~")


@dataclass(frozen=True)
class CapsuleRequest:
    """``NAME[@SPEC][:PATH]``: a PEP 508 requirement and, optionally, where to mount it."""

    name: str
    requirement: str          # "model==3.0.0", "dataset>=1.2,<2", "dataset"
    target: str | None = None
    exact: str | None = None  # NAME@VERSION: that version must exist (NotFound, not a conflict)


@dataclass(frozen=True)
class MountChange:
    """What one attach, swap or detach did to a job."""

    job_id: str
    added: tuple[Attachment, ...] = ()
    removed: tuple[Attachment, ...] = ()
    kept: tuple[Attachment, ...] = ()      # asked for, already there
    latency_ns: int = 0                    # request received -> every mount done


@dataclass
class ReconcileReport:
    verified: int = 0
    reestablished: list[str] = field(default_factory=list)   # "job target"
    released: int = 0
    failed: list[str] = field(default_factory=list)


def check_target(path: str) -> str:
    """An absolute, normalised target path inside a job (no '.', '..', NUL, not '/')."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path or len(path) > 4096:
        raise InvalidArgument(f"capsule mount path {path!r} must be an absolute path inside the job")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise InvalidArgument("a capsule cannot be mounted on the job's root")
    if any(p in (".", "..") for p in parts):
        raise InvalidArgument(f"capsule mount path {path!r} must not contain '.' or '..'")
    return "/" + "/".join(parts)


def parse_capsule_request(text: str, *, at: str | None = None) -> CapsuleRequest:
    """Parse ``NAME``, ``NAME@VERSION``, ``NAME@SPECIFIERS`` (``dataset@>=1.2,<2``), each with ``:PATH``."""
    body, sep, path = text.partition(":")
    if sep and at is not None:
        raise InvalidArgument(f"{text!r}: give the mount path either after ':' or with --at, not both")
    target = check_target(path if sep else at) if (sep or at is not None) else None
    name, has_spec, spec = body.partition("@")
    check_name(name)
    if not has_spec:
        requirement = name
    elif not spec:
        raise InvalidArgument(f"{text!r}: nothing after '@' (expected a version or specifiers)")
    elif spec.startswith(_SPEC_OPERATORS):
        requirement = str(parse_requirement(name + spec))
    else:
        exact = str(parse_version(spec))
        return CapsuleRequest(name=name, requirement=f"{name}=={exact}", target=target, exact=exact)
    return CapsuleRequest(name=name, requirement=requirement, target=target)


def default_target(name: str) -> str:
    return f"{CAPSULES_DIR}/{name}"


class JobLookup(Protocol):
    """All the manager needs of the jobs: one job by id or unambiguous prefix (NotFound otherwise)."""

    def get(self, id_or_prefix: str) -> Job: ...


class CapsuleManager:
    def __init__(self, store: CapsuleStore, supervisor: SupervisorClient, jobs: JobLookup) -> None:
        self.store = store
        self.supervisor = supervisor
        self.jobs = jobs
        self._guard = threading.Lock()
        self._job_locks: dict[str, threading.Lock] = {}

    @contextmanager
    def _locked(self, job_id: str) -> Iterator[None]:
        """One change at a time per job: the consistency checks must see what the last change left."""
        with self._guard:
            lock = self._job_locks.setdefault(job_id, threading.Lock())
        with lock:
            yield

    # -- planning ------------------------------------------------------------------------
    def _plan(self, requests: Sequence[CapsuleRequest], held: Sequence[Attachment]) -> list[tuple[CapsuleVersion, str]]:
        """(version, target) for every member of the resolved set; ``held`` pins what the job has."""
        held_version = {a.name: a.version for a in held}
        for req in requests:
            if req.exact is not None:
                self.store.get(req.name, req.exact)   # NotFound names it
            have = held_version.get(req.name)
            if have is not None and not satisfies(parse_requirement(req.requirement), have):
                where = ", ".join(a.target for a in held if a.name == req.name)
                raise Conflict(f"the job already has {req.name}@{have} attached at {where}, which does not "
                               f"satisfy '{req.requirement}'; use `capsa capsule swap` to change its version")
        # Resolve the request alone first; pin only the held capsules it would move, and again, until
        # nothing held moves. Pinning everything the job holds would make each attach slower as the job
        # collects capsules (the resolver's cost grows with the number of requirements).
        available = self._candidates([r.name for r in requests])
        wanted = [r.requirement for r in requests]
        pinned: dict[str, str] = {}
        for _round in range(len(held_version) + 1):
            try:
                members = resolve(available, wanted + [f"{n}=={v}" for n, v in sorted(pinned.items())])
            except Conflict as exc:
                if not pinned:
                    raise
                attached = ", ".join(f"{n}@{v}" for n, v in sorted(pinned.items()))
                raise Conflict(f"{exc.message} (the job already has {attached} attached)") from None
            moved = {m.name: held_version[m.name] for m in members
                     if m.name in held_version and m.version != held_version[m.name]}
            if not moved:
                break
            pinned.update(moved)
        custom = {r.name: r.target for r in requests if r.target is not None}
        plan = [(v, custom.get(v.name) or default_target(v.name)) for v in members]
        targets = [t for _, t in plan]
        clash = next((t for t in targets if targets.count(t) > 1), None)
        if clash is not None:
            raise InvalidArgument(f"two capsules would be mounted at {clash}")
        for index, target in enumerate(targets):
            for other in targets[:index] + [a.target for a in held]:
                if other != target and _nested(target, other):
                    raise InvalidArgument(f"capsule mounts cannot be nested: {target} and {other}")
        for version, target in plan:
            other = next((a for a in held if a.target == target and a.name != version.name), None)
            if other is not None:
                raise Conflict(f"{target} already holds {other.name}@{other.version} in the job")
        return plan

    def _candidates(self, names: Sequence[str]) -> list[CapsuleVersion]:
        """Every version of ``names`` and of every capsule any of them may depend on (all the resolver can use).

        Loading only these, rather than the whole store, keeps an attach as fast with a thousand
        capsules in the store as with two.
        """
        found: list[CapsuleVersion] = []
        seen: set[str] = set()
        pending = list(names)
        while pending:
            name = pending.pop()
            if name in seen:
                continue
            seen.add(name)
            for version in self.store.list(name):
                found.append(version)
                pending.extend(parse_requirement(dep).name for dep in version.deps)
        return found

    @staticmethod
    def _check_start_target(target: str, *, image: bool) -> None:
        # A start-time bind is made by the job's init with a plain path walk; only paths capsa
        # itself creates (a tmpfs, no symlinks) are safe for it. Live attach has no such limit.
        if target == CAPSULES_DIR:
            raise InvalidArgument(f"a capsule is mounted under {CAPSULES_DIR}, not on it")
        first = target.split("/")[1]
        if first == CAPSULES_DIR.strip("/"):
            return
        if image or first in _BUILT_IN:
            where = "in a job with an image" if image else f"under /{first}"
            raise InvalidArgument(
                f"capsules given at start cannot be mounted {where} ({target}): use a path under "
                f"{CAPSULES_DIR}, or attach to the running job with `capsa capsule attach --at {target}`, "
                "which resolves the path inside the job without following symlinks")

    # -- at start ------------------------------------------------------------------------
    def exists(self, spec: str) -> bool:
        """Whether some stored version satisfies ``spec`` (``NAME[@SPEC][:PATH]``); for checks before a start.

        A malformed ``spec`` raises InvalidArgument; dependencies are resolved (and refused) at the start.
        """
        request = parse_capsule_request(spec)
        wanted = parse_requirement(request.requirement)
        return any(satisfies(wanted, v.version) for v in self.store.list(request.name))

    def plan_start(self, specs: Sequence[str], *, image: bool) -> list[tuple[CapsuleVersion, str]]:
        """Resolve ``--capsule`` arguments (raises on a conflict); nothing is recorded."""
        requests = [parse_capsule_request(s) for s in specs]
        plan = self._plan(requests, ())
        for version, target in plan:
            self._check_start_target(target, image=image)
            # A tree deleted or damaged behind capsa's back must never reach a job: refuse before any record.
            self.store.check_present(version)
        return plan

    def prepare_start(self, job_id: str, specs: Sequence[str], *, image: bool) -> tuple[BindSpec, ...]:
        """Record every member for ``job_id`` and return the read-only binds its spec needs."""
        binds: list[BindSpec] = []
        try:
            for version, target in self.plan_start(specs, image=image):
                self.store.record_attach(job_id, version.name, version.version, target)
                binds.append(BindSpec(source=str(version.path), target=target, readonly=True))
        except BaseException:
            self.release_job(job_id)
            raise
        return tuple(binds)

    # -- live ----------------------------------------------------------------------------
    def _running(self, job_ref: str) -> str:
        job = self.jobs.get(job_ref)
        if job.state.value != "RUNNING":
            raise FailedPrecondition(f"job {job.short_id} is {job.state.value}; capsules attach to running jobs only")
        return job.id

    def attach(self, job_ref: str, spec: str, *, at: str | None = None) -> MountChange:
        """Mount ``spec`` (and its dependencies) into a running job; idempotent for what is already there."""
        t0 = time.monotonic_ns()
        request = parse_capsule_request(spec, at=at)
        job_id = self._running(job_ref)
        with self._locked(job_id):
            held = self.store.attachments(job_id)
            plan = self._plan([request], held)
            present = {(a.target, a.digest): a for a in held}
            added: list[Attachment] = []
            kept: list[Attachment] = []
            try:
                for version, target in plan:
                    if (target, version.digest) in present:
                        kept.append(present[(target, version.digest)])
                        continue
                    record = self.store.record_attach(job_id, version.name, version.version, target)
                    try:
                        self.supervisor.mount(job_id, "attach", source=str(version.path), target=target)
                    except BaseException:
                        self.store.record_detach(job_id, target, version=version.version)
                        raise
                    added.append(record)
            except BaseException:
                self._undo(job_id, added)
                raise
        self._release_if_ended(job_id)
        self._events("attached", job_id, added)
        return MountChange(job_id, added=tuple(added), kept=tuple(kept), latency_ns=time.monotonic_ns() - t0)

    def _events(self, action: str, job_id: str, records: Sequence[Attachment]) -> None:
        """``capsa events``: one capsule event per mount added or removed, after the change."""
        from capsa.events import EventLog

        for record in records:
            EventLog.of(self.store.db).safe_record("capsule", action, f"{record.name}@{record.version}",
                                                   attributes={"job_id": job_id, "target": record.target})

    def _undo(self, job_id: str, added: Sequence[Attachment]) -> None:
        for record in reversed(added):
            try:
                self.supervisor.mount(job_id, "detach", target=record.target)
            except CapsaError as exc:
                log.warning("rolling back %s at %s in job %s: %s", record.name, record.target, job_id, exc)
            self.store.record_detach(job_id, record.target, version=record.version)

    def swap(self, job_ref: str, ref: str) -> MountChange:
        """Replace the version of a capsule attached to a job, atomically at each of its targets."""
        t0 = time.monotonic_ns()
        name, version = parse_reference(ref)
        job_id = self._running(job_ref)
        new = self.store.get(name, str(version))
        with self._locked(job_id):
            held = self.store.attachments(job_id)
            mine = [a for a in held if a.name == name]
            if not mine:
                raise NotFound(f"{name} is not attached to job {job_id[:12]}; use `capsa capsule attach`")
            self._check_swap(new, [a for a in held if a.name != name])
            added: list[Attachment] = []
            removed: list[Attachment] = []
            kept: list[Attachment] = []
            for old in mine:
                if old.digest == new.digest and old.version == new.version:
                    kept.append(old)
                    continue
                record = self.store.record_attach(job_id, new.name, new.version, old.target)
                try:
                    self.supervisor.mount(job_id, "swap", source=str(new.path), target=old.target)
                except BaseException:
                    if old.version != new.version:
                        self.store.record_detach(job_id, old.target, version=new.version)
                    raise
                if old.version != new.version:
                    self.store.record_detach(job_id, old.target, version=old.version)
                added.append(record)
                removed.append(old)
        self._release_if_ended(job_id)
        return MountChange(job_id, added=tuple(added), removed=tuple(removed), kept=tuple(kept),
                           latency_ns=time.monotonic_ns() - t0)

    def _check_swap(self, new: CapsuleVersion, others: Sequence[Attachment]) -> None:
        versions = {a.name: a.version for a in others}
        for text in new.deps:
            req = parse_requirement(text)
            have = versions.get(req.name)
            if have is None:
                raise Conflict(f"{new.ref} requires '{text}', which is not attached to the job; attach it first")
            if not satisfies(req, have):
                raise Conflict(f"{new.ref} requires '{text}', but the job has {req.name}@{have} attached")
        for name, have in sorted(versions.items()):
            for text in self.store.get(name, have).deps:
                req = parse_requirement(text)
                if req.name == new.name and not satisfies(req, new.version):
                    raise Conflict(f"{name}@{have} attached to the job requires '{text}', which {new.ref} "
                                   "does not satisfy")

    def detach(self, job_ref: str, name: str) -> MountChange:
        """Unmount every target of capsule ``name`` from a job (refused while an attached capsule needs it)."""
        t0 = time.monotonic_ns()
        check_name(name)
        job = self.jobs.get(job_ref)
        with self._locked(job.id):
            held = self.store.attachments(job.id)
            mine = [a for a in held if a.name == name]
            if not mine:
                raise NotFound(f"{name} is not attached to job {job.short_id}")
            for other in {(a.name, a.version) for a in held if a.name != name}:
                for text in self.store.get(*other).deps:
                    if parse_requirement(text).name == name:
                        raise Conflict(f"{other[0]}@{other[1]} attached to job {job.short_id} requires '{text}'; "
                                       f"detach {other[0]} first")
            for record in mine:
                if job.state.value == "RUNNING":
                    try:
                        self.supervisor.mount(job.id, "detach", target=record.target)
                    except NotFound:
                        pass   # the job ended, or nothing is mounted there any more: only the record is left
                self.store.record_detach(job.id, record.target, version=record.version)
        self._events("detached", job.id, mine)
        return MountChange(job.id, removed=tuple(mine), latency_ns=time.monotonic_ns() - t0)

    # -- end of a job, restarts ---------------------------------------------------------------
    def release_job(self, job_id: str) -> int:
        """Forget every attachment of ``job_id`` (it ended: its mount namespace is gone). Never raises."""
        released = 0
        try:
            for target in sorted({a.target for a in self.store.attachments(job_id)}):
                released += self.store.record_detach(job_id, target)
        except Exception:
            log.exception("could not release the capsule attachments of job %s", job_id)
        return released

    def _release_if_ended(self, job_id: str) -> None:
        # The exit event may have released the job's attachments before this change recorded its own.
        try:
            ended = self.jobs.get(job_id).state.ended
        except NotFound:
            ended = True
        if ended:
            self.release_job(job_id)

    def reconcile(self, live_job_ids: Collection[str] | None = None) -> ReconcileReport:
        """After a daemon restart: release what ended, verify and re-establish what runs.

        ``live_job_ids``: the jobs the daemon still counts as live; the attachments of any other
        job are released without asking the supervisor (which is gone at shutdown).
        """
        report = ReconcileReport()
        records = self.store.attachments()
        if live_job_ids is not None:
            live = set(live_job_ids)
            for job_id in sorted({a.job_id for a in records} - live):
                report.released += self.release_job(job_id)
            records = [a for a in records if a.job_id in live]
        if not records:
            return report
        jobs = {rec.job_id: rec for rec in self.supervisor.list()}
        for job_id in sorted({a.job_id for a in records}):
            rec = jobs.get(job_id)
            if rec is not None and rec.state == ProcState.STARTING:
                continue   # its binds are being mounted right now; its exit will release them
            if rec is None or rec.state != ProcState.RUNNING or not rec.pid:
                report.released += self.release_job(job_id)
                continue
            with self._locked(job_id):
                self._reconcile_job(job_id, rec.pid, [a for a in records if a.job_id == job_id], report)
        log.info("capsule attachments reconciled: %d verified, %d re-established, %d released, %d failed",
                 report.verified, len(report.reestablished), report.released, len(report.failed))
        return report

    def _reconcile_job(self, job_id: str, pid: int, records: list[Attachment], report: ReconcileReport) -> None:
        try:
            # Later lines are mounted on top: the last entry of a mount point is what the job sees.
            visible = {e.mount_point: e for e in mounts.mountinfo(pid)}
        except OSError:
            report.released += self.release_job(job_id)
            return
        for target in sorted({a.target for a in records}):
            rows = [a for a in records if a.target == target]
            entry = visible.get(target)
            seen = os.path.basename(entry.root) if entry is not None else None
            keep = next((a for a in rows if a.digest.partition(":")[2] == seen), None)
            if keep is not None:
                report.verified += 1
            else:
                keep = max(rows, key=lambda a: a.attached_at)
                try:
                    version = self.store.get(keep.name, keep.version)
                    self.supervisor.mount(job_id, "swap" if entry is not None else "attach",
                                          source=str(version.path), target=target)
                    report.reestablished.append(f"{job_id} {target}")
                except CapsaError as exc:
                    log.warning("cannot re-establish %s@%s at %s in job %s: %s", keep.name, keep.version, target,
                                job_id, exc)
                    report.failed.append(f"{job_id} {target}: {exc}")
                    self.store.record_detach(job_id, target)
                    continue
            for row in rows:
                if row.version != keep.version:
                    self.store.record_detach(job_id, target, version=row.version)


def _nested(a: str, b: str) -> bool:
    # both are normalised by check_target: no '.', '..', doubled or trailing '/'
    return a.startswith(b + "/") or b.startswith(a + "/")
