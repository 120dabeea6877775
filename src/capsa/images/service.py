"""Images as users see them: pull, list, inspect, remove, prune, history, and rootfs for jobs."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from capsa.errors import CapsaError, Conflict, FailedPrecondition, InvalidArgument, NotFound
from capsa.fsm import ACTIVE_STATES, Engine, RunInfo
from capsa.images.pull import FETCH, PULL, PullContext, chain_key, register_machines
from capsa.images.reference import parse_reference
from capsa.images.store import ImageRecord
from capsa.images.validity import chain_problem
from capsa.images.verify import ImageReport
from capsa.snapshots import Mount
from capsa.state.keys import check_request_id

__all__ = ["ImageService", "JobRootfs", "PullProgress", "PullUpdate"]

PULL_POLICIES = ("missing", "always", "never")

# A pull's request id names the run it started, so a retried request waits for (or returns the
# outcome of) that run instead of pulling again; the primary key decides between two at once.
MIGRATIONS = [
    """
    CREATE TABLE image_pull_requests (
        request_id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        ref TEXT NOT NULL,
        created_ns INTEGER NOT NULL
    );
    """,
]


@dataclass(frozen=True)
class PullUpdate:
    run_id: str
    phase: str
    layers: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    image: dict[str, Any] | None = None


@dataclass(frozen=True)
class PullProgress:
    """An unfinished pull: layers and bytes are those of the layer fetches started so far."""

    ref: str
    run_id: str
    state: str
    phase: str
    layers_done: int
    layers_total: int
    bytes_done: int
    bytes_total: int
    started_at_ns: int


@dataclass(frozen=True)
class JobRootfs:
    """A writable snapshot of an image, ready to mount as a job's root."""

    image: ImageRecord
    snapshot: str
    mounts: list[Mount]


class ImageService:
    def __init__(self, engine: Engine, pc: PullContext) -> None:
        self.engine = engine
        self.pc = pc
        self.db = pc.images.db
        self.db.migrate("image_pull_requests", MIGRATIONS)
        register_machines(engine, pc)

    # -- pull -----------------------------------------------------------------------------------
    def canonical(self, ref: str) -> str:
        return parse_reference(ref).canonical

    def start_pull(self, ref: str, *, platform: str = "", insecure: bool = False, expected_digest: str = "",
                   always: bool = False, request_id: str = "") -> str:
        """The run id of the pull of ``ref``; with a ``request_id`` seen before, the run it started then."""
        if check_request_id(request_id):
            earlier = self._run_for_request(request_id)
            if earlier is not None:
                return earlier
        canonical = self.canonical(ref)
        handle = self.engine.start(PULL, canonical, "pull", {
            "ref": canonical, "platform": platform, "insecure": insecure,
            "expected_digest": expected_digest or None, "always": always,
        })
        if not request_id:
            return handle.run_id
        # Two requests with one id at the same moment both reach here; the engine joined them to one
        # run unless the first had already ended, and the first mapping recorded is the answer.
        with self.db.tx() as conn:
            conn.execute("INSERT OR IGNORE INTO image_pull_requests(request_id, run_id, ref, created_ns)"
                         " VALUES(?,?,?,?)", (request_id, handle.run_id, canonical, time.time_ns()))
        return self._run_for_request(request_id) or handle.run_id

    def _run_for_request(self, request_id: str) -> str | None:
        row = self.db.query_one("SELECT run_id FROM image_pull_requests WHERE request_id = ?", (request_id,))
        return None if row is None else str(row["run_id"])

    def pull(self, ref: str, *, request_id: str = "", **kwargs: Any) -> ImageRecord:
        """Pull ``ref`` and wait; a ``request_id`` seen before returns that pull's outcome, pulling nothing."""
        run_id = self.start_pull(ref, request_id=request_id, **kwargs)
        final = self.engine.handle(run_id).wait()
        pulled = final.request.get("ref") if isinstance(final.request, dict) else None
        return self.pc.images.get(str(pulled) if pulled else self.canonical(ref))

    def watch_pull(self, run_id: str, *, interval: float = 0.2) -> Iterator[PullUpdate]:
        """Progress of a pull until it ends; raises the pull's typed error if it failed."""
        handle = self.engine.handle(run_id)
        while True:
            info = self.engine.get(run_id)
            if handle.done() or info.state in ("succeeded", "failed", "canceled", "handed_off"):
                final = handle.wait()
                ref = final.request["ref"] if isinstance(final.request, dict) else None
                rec = self.pc.images.find(ref) if ref else None
                yield PullUpdate(run_id=run_id, phase="done", layers=self._layer_progress(final), done=True,
                                 image=rec.to_dict() if rec else final.output)
                return
            yield PullUpdate(run_id=run_id, phase=str((info.progress or {}).get("phase", info.current_transition)),
                             layers=self._layer_progress(info))
            time.sleep(interval)

    def pulls_in_flight(self) -> list[PullProgress]:
        """Every unfinished pull, oldest first, with its layer and byte progress.

        Read from the engine's runs rather than the image store: a first pull of a reference has no
        image record until it ends, and the dashboard must show it all along.
        """
        active = [r for r in self.engine.history(machine=PULL, limit=1000) if r.state in ACTIVE_STATES]
        out: list[PullProgress] = []
        for run in sorted(active, key=lambda r: r.created_at):
            req = run.request if isinstance(run.request, dict) else {}
            layers = self._layer_progress(run)
            out.append(PullProgress(
                ref=str(req.get("ref") or run.resource_id), run_id=run.run_id, state=run.state,
                phase=str((run.progress or {}).get("phase") or run.current_transition or ""),
                layers_done=sum(1 for la in layers if la["state"] == "downloaded"), layers_total=len(layers),
                bytes_done=sum(la["bytes"] for la in layers), bytes_total=sum(la["total"] for la in layers),
                started_at_ns=int(run.created_at * 1e9)))
        return out

    def _layer_progress(self, info: RunInfo) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for run in self.engine.history(machine=FETCH, limit=200):
            if run.created_at < info.created_at - 1:
                continue
            progress = run.progress or {}
            req = run.request if isinstance(run.request, dict) else {}
            layer = req.get("layer") or {}
            if not isinstance(info.request, dict) or req.get("ref") != info.request.get("ref"):
                continue
            state = {"succeeded": "downloaded", "handed_off": "downloaded", "running": "downloading",
                     "queued": "waiting", "retry_wait": "retrying", "failed": "failed"}.get(run.state, run.state)
            out.append({"digest": layer.get("digest") or layer.get("locator", ""), "state": state,
                        "bytes": int(progress.get("bytes", layer.get("size", 0) if state == "downloaded" else 0)),
                        "total": int(layer.get("size", 0))})
        return out

    # -- queries ------------------------------------------------------------------------------------
    def get(self, ref: str) -> ImageRecord:
        rec = self.pc.images.find(ref)
        if rec is None:
            try:
                rec = self.pc.images.find(self.canonical(ref))
            except InvalidArgument:
                rec = None
        if rec is None:
            raise NotFound(f"no such image: {ref} (see `capsa image ls`, or `capsa image pull {ref}`)")
        return rec

    def list(self) -> list[ImageRecord]:
        return self.pc.images.list()

    def history(self, ref: str, limit: int = 20) -> list[RunInfo]:
        canonical = self.canonical(ref) if not ref.startswith("sha256:") else ref
        return self.engine.history(resource_id=canonical, limit=limit)

    # -- verify ------------------------------------------------------------------------------------
    def verify(self, ref: str = "", *, all_images: bool = False, repair: bool = False) -> list[ImageReport]:
        """Re-hash images against their recorded digests and diff_ids; ``repair`` pulls damaged ones again."""
        from capsa.images.verify import verify_image

        if not all_images and not ref:
            raise InvalidArgument("name an image to verify, or ask for all of them")
        reports: list[ImageReport] = []
        for rec in self.list() if all_images else [self.get(ref)]:
            report = verify_image(self.pc, rec)
            if not report.ok and repair:
                try:
                    again = verify_image(self.pc, self.pull(rec.ref))
                    report.repaired = again.ok
                    report.repair_error = "; ".join(again.problems)
                except CapsaError as exc:
                    report.repair_error = exc.message
            reports.append(report)
        return reports

    def backup_database(self, dest: str) -> Any:
        """An online copy of the state database (the one the image store lives in)."""
        from capsa.state.backup import backup_database

        return backup_database(self.pc.images.db.path, dest)

    # -- jobs ---------------------------------------------------------------------------------------
    def rootfs_for_job(self, ref: str, job_id: str, *, pull: str = "missing") -> JobRootfs:
        if pull not in PULL_POLICIES:
            raise InvalidArgument(f"--pull {pull!r}: expected one of {', '.join(PULL_POLICIES)}")
        rec = self.pc.images.find(ref) or self._find_canonical(ref)
        if pull == "always" or (rec is None and pull == "missing"):
            rec = self.pull(ref, always=pull == "always")
        if rec is None:
            raise NotFound(f"image {ref} is not present and --pull=never was given")
        # Never start a job on a damaged root (image ADR-006): repair it by pulling again, or refuse.
        problem = chain_problem(self.pc.snapshotter, rec.chain)
        if problem is not None and pull != "never":
            rec = self.pull(rec.ref)  # the pull sees the damage, records why and rebuilds what is broken
            problem = chain_problem(self.pc.snapshotter, rec.chain)
        if problem is not None:
            raise FailedPrecondition(f"image {rec.ref} is damaged ({problem}); no job is started on it."
                                     f" Repair it with `capsa image verify {rec.ref} --repair` or pull it again")
        key = f"job-{job_id}"
        mounts = self.pc.snapshotter.prepare(key, rec.top_snapshot, labels={"capsa/job": job_id})
        self.pc.images.add_user(job_id, rec.ref, rec.digest, key)
        return JobRootfs(image=rec, snapshot=key, mounts=list(mounts))

    def _find_canonical(self, ref: str) -> ImageRecord | None:
        try:
            return self.pc.images.find(self.canonical(ref))
        except InvalidArgument:
            return None

    def job_ended(self, job_id: str) -> None:
        self.pc.images.mark_stopped(job_id)

    def reconcile_job_roots(self, live_job_ids: Collection[str]) -> None:
        """After a restart: the roots of jobs that ended while the daemon was down are unused now."""
        live = set(live_job_ids)
        for user in self.pc.images.all_users():
            if user["running"] and user["job_id"] not in live:
                self.pc.images.mark_stopped(user["job_id"])

    def job_removed(self, job_id: str) -> None:
        key = self.pc.images.remove_user(job_id)
        if key:
            try:
                self.pc.snapshotter.remove(key)
            except NotFound:
                pass

    # -- removal ------------------------------------------------------------------------------------
    def remove(self, ref: str, *, force: bool = False) -> list[str]:
        rec = self.get(ref)
        running = self.pc.images.users(rec.digest, running_only=True)
        if running:
            ids = ", ".join(u["job_id"][:12] for u in running)
            raise Conflict(f"image {rec.ref} is in use by running job(s) {ids}; stop them first"
                           " (--force never stops jobs)")
        ended = self.pc.images.users(rec.digest, running_only=False)
        if ended and not force:
            ids = ", ".join(u["job_id"][:12] for u in ended)
            raise Conflict(f"image {rec.ref} is used by ended job(s) {ids}; remove them or use --force")
        for user in ended:
            self.job_removed(user["job_id"])
        self.pc.images.delete(rec.ref)
        removed = [rec.ref]
        if not self.pc.images.refs_for_digest(rec.digest):
            self._remove_chain(rec)
        return removed

    def _remove_chain(self, rec: ImageRecord) -> None:
        """Remove the image's snapshots top-down while no other image or job stands on them."""
        shared = {key for other in self.pc.images.list() for key in other.chain}
        for key in reversed(rec.chain):
            if key in shared:
                break  # another image (e.g. one built on this one, or its base) still uses it
            try:
                self.pc.snapshotter.remove(key)
            except NotFound:
                continue
            except CapsaError:
                break  # still a parent of another image's layer or a job's snapshot: keep the rest

    def prune(self, *, dry_run: bool = False) -> tuple[list[str], int]:
        """Remove blobs, snapshots and ingest leftovers no image refers to; returns (what, bytes freed)."""
        images = self.pc.images.list()
        keep_blobs: set[str] = set()
        keep_snaps: set[str] = set()
        for rec in images:
            keep_blobs.update(layer["digest"] for layer in rec.layers)
            keep_blobs.add(rec.digest)
            keep_snaps.update(rec.chain)
            cfg_digest = rec.config.get("_digest")
            if cfg_digest:
                keep_blobs.add(cfg_digest)
        for user in self.pc.images.all_users():
            keep_snaps.add(user["snapshot"])
        # Unfinished pulls own blobs and snapshots no image names yet: keep what they listed, and
        # anything stored since the oldest of them started.
        in_flight_since, flight_blobs, flight_snaps = self._in_flight()
        keep_blobs |= flight_blobs
        keep_snaps |= flight_snaps
        removed: list[str] = []
        freed = 0
        # Snapshots: leaves first, until nothing more can go.
        progress = True
        while progress:
            progress = False
            infos = self.pc.snapshotter.walk()
            parents = {i.parent for i in infos if i.parent}
            for info in infos:
                if info.key in keep_snaps or info.key in parents or info.key.startswith("extract-"):
                    continue
                if in_flight_since is not None and info.created >= in_flight_since:
                    continue
                try:
                    size = self.pc.snapshotter.usage(info.key).size
                except CapsaError:
                    size = 0
                if not dry_run:
                    try:
                        self.pc.snapshotter.remove(info.key)
                    except CapsaError:
                        continue
                    progress = True
                removed.append(f"snapshot {info.key}")
                freed += size
        referenced_configs = self._config_digests(images)
        for blob in list(self.pc.content.walk()):
            digest = str(blob.digest)
            if digest in keep_blobs or digest in referenced_configs:
                continue
            if in_flight_since is not None and blob.created >= in_flight_since:
                continue
            removed.append(f"blob {digest}")
            freed += blob.size
            if not dry_run:
                self.pc.content.delete(digest)
        for ingest in self.pc.content.ingests():
            if ingest.locked:  # a download in progress right now
                continue
            removed.append(f"ingest {ingest.ref}")
            freed += ingest.offset
        if not dry_run:
            self.pc.content.prune_ingests(older_than=0)
        return removed, freed

    def _in_flight(self) -> tuple[float | None, set[str], set[str]]:
        """(start of the oldest unfinished pull, blob digests and snapshot keys unfinished pulls listed)."""
        active = [r for r in self.engine.history(machine=PULL, limit=1000) if r.state in ACTIVE_STATES]
        blobs: set[str] = set()
        snaps: set[str] = set()
        for run in active:
            state = run.output if isinstance(run.output, dict) else {}
            digests = [la.get("digest") for la in state.get("layers") or [] if isinstance(la, dict)]
            blobs.update(d for d in digests if d)
            if state.get("manifest_digest"):
                blobs.add(str(state["manifest_digest"]))
            parent: str | None = None
            for digest in digests:
                if not digest:
                    break  # an S3 layer not hashed yet: its chain is unknown, the time guard covers it
                parent = chain_key(parent, digest)
                snaps.add(parent)
        return min((r.created_at for r in active), default=None), blobs, snaps

    def _config_digests(self, images: list[ImageRecord]) -> set[str]:
        """Config blobs are referenced from manifests; keep those of kept images."""
        import json

        keep: set[str] = set()
        for rec in images:
            if not self.pc.content.exists(rec.digest):
                continue
            try:
                manifest = json.loads(self.pc.content.read_bytes(rec.digest, limit=4 << 20))
            except (CapsaError, ValueError):
                continue
            cfg = (manifest.get("config") or {}).get("digest")
            if cfg:
                keep.add(cfg)
        return keep
