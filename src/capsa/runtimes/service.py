"""Runtimes as users see them: build, list, inspect, remove; and the name -> image lookup jobs use.

A runtime *is* an image (ARCHITECTURE.md): ``runtime:NAME@VERSION`` in the image store, with
OCI config labels naming the runtime and the spec it was built from. There is no second
registry of runtimes to drift from the first: listing runtimes lists those images.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capsa.errors import Conflict, InvalidArgument, NotFound
from capsa.fsm import ACTIVE_STATES, Engine
from capsa.images.service import ImageService
from capsa.images.store import ImageRecord
from capsa.jobs.service import JobService
from capsa.runtimes._cache import BuildCache
from capsa.runtimes.builder import (
    BUILD,
    IMAGE_PREFIX,
    LABELS,
    BuildContext,
    Builder,
    image_ref,
    runtime_labels,
)
from capsa.runtimes.spec import host_mirror, parse_runtime_name, parse_spec

__all__ = ["BuildEvent", "BuildHandle", "Runtime", "RuntimeService"]

_READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Runtime:
    name: str
    version: str
    image_ref: str
    digest: str
    size: int
    created_ns: int
    spec_hash: str
    spec: dict[str, Any]
    layers: list[dict[str, Any]]
    in_use_by: list[str] = field(default_factory=list)
    description: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def base(self) -> str:
        base = self.spec.get("base") or {}
        if base.get("image"):
            return f"image {base['image']}"
        if base.get("runtime"):
            return f"runtime {base['runtime']}"
        deb = base.get("debootstrap") or {}
        return f"debootstrap {deb.get('suite', '?')}" if deb else "?"

    @classmethod
    def from_record(cls, rec: ImageRecord) -> Runtime:
        labels = runtime_labels(rec)
        try:
            spec = json.loads(labels.get(LABELS["spec"], "{}"))
        except ValueError:
            spec = {}
        name, _, version = rec.ref.removeprefix(IMAGE_PREFIX).partition("@")
        return cls(name=labels.get(LABELS["name"], name), version=labels.get(LABELS["version"], version),
                   image_ref=rec.ref, digest=rec.digest, size=rec.size, created_ns=rec.created_ns,
                   spec_hash=labels.get(LABELS["spec_hash"], ""), spec=spec if isinstance(spec, dict) else {},
                   layers=list(rec.layers), in_use_by=list(rec.users),
                   description=labels.get(LABELS["description"], ""))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "ref": self.ref, "image_ref": self.image_ref,
                "digest": self.digest, "size": self.size, "created_ns": self.created_ns,
                "spec_hash": self.spec_hash, "base": self.base, "description": self.description,
                "layers": self.layers, "in_use_by": self.in_use_by, "spec": self.spec}


@dataclass(frozen=True)
class BuildHandle:
    run_id: str
    ref: str
    joined: bool


@dataclass(frozen=True)
class BuildEvent:
    """One update of a build: new log bytes, and/or the end (``done``) with the runtime built."""

    run_id: str
    phase: str = ""
    step: int = 0
    steps: int = 0
    log: bytes = b""
    done: bool = False
    up_to_date: bool = False
    runtime: Runtime | None = None


class RuntimeService:
    """The runtime domain. Construct it before ``engine.resume()`` so its machine is registered.

    ``cache_dir``: a build cache shared across daemon homes (:mod:`capsa.runtimes._cache`);
    ``queue``: the engine queue builds run on (a build holds its worker while its jobs run).
    """

    def __init__(self, engine: Engine, images: ImageService, jobs: JobService, home: Path, *,
                 queue: str | None = None, cache_dir: Path | None = None,
                 resolv_conf: Path = Path("/etc/resolv.conf"), etc_apt: Path = Path("/etc/apt")) -> None:
        self.engine = engine
        self.images = images
        self.jobs = jobs
        self.etc_apt = etc_apt
        self.logs_dir = home / "runtimes" / "builds"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        cache = BuildCache(cache_dir) if cache_dir is not None else None
        self.builder = Builder(BuildContext(images=images, jobs=jobs, logs_dir=self.logs_dir, cache=cache,
                                            resolv_conf=resolv_conf))
        engine.register(self.builder.machine(queue))

    # -- build ----------------------------------------------------------------------------------
    def start_build(self, spec_yaml: str, *, force: bool = False, source: str = "spec") -> BuildHandle:
        """Validate ``spec_yaml`` and start (or join) its durable build; returns at once."""
        spec = parse_spec(spec_yaml, source=source)
        if spec.base.runtime is not None and parse_runtime_name(spec.base.runtime) == (spec.name, spec.version):
            raise InvalidArgument(f"{source}: runtime {spec.ref} cannot be its own base")
        spec_hash = spec.spec_hash()
        existing = self.images.pc.images.find(image_ref(spec.ref))
        if existing is not None and not force:
            built_from = runtime_labels(existing).get(LABELS["spec_hash"])
            if built_from != spec_hash:
                raise Conflict(f"runtime {spec.ref} exists, built from a different spec; bump the version,"
                               " or rebuild it with --force")
        mirror = ""
        if spec.base.debootstrap is not None:
            mirror = spec.base.debootstrap.mirror or host_mirror(spec.base.debootstrap.suite, etc_apt=self.etc_apt)
        handle = self.engine.start(BUILD, spec.ref, "build", {"spec": spec.canonical(), "spec_hash": spec_hash,
                                                               "force": force, "mirror": mirror})
        if handle.joined:
            running = handle.info().request
            if isinstance(running, dict) and running.get("spec_hash") != spec_hash:
                raise Conflict(f"a build of {spec.ref} from a different spec is in progress (run {handle.run_id});"
                               " wait for it, then rebuild")
        return BuildHandle(run_id=handle.run_id, ref=spec.ref, joined=handle.joined)

    def watch(self, run_id: str, *, stop: threading.Event | None = None,
              interval: float = 0.1) -> Iterator[BuildEvent]:
        """The build log from its start, as it grows, then the result; raises the build's typed error."""
        path = self.logs_dir / f"{run_id}.log"
        offset = 0
        handle = self.engine.handle(run_id)
        while True:
            info = self.engine.get(run_id)
            finished = info.finished
            data = _read_from(path, offset)
            if data:
                offset += len(data)
                progress = info.progress if isinstance(info.progress, dict) else {}
                yield BuildEvent(run_id=run_id, phase=str(progress.get("phase", info.current_transition or "")),
                                 step=int(progress.get("step", 0)), steps=int(progress.get("steps", 0)), log=data)
                continue
            if finished:
                break
            if stop is not None and stop.wait(interval):
                return
            if stop is None:
                time.sleep(interval)
        final = handle.wait()
        out = final.output if isinstance(final.output, dict) else {}
        image = out.get("image") or {}
        runtime = self._find(str(image.get("ref", ""))) if image else None
        yield BuildEvent(run_id=run_id, phase="done", done=True, up_to_date=bool(out.get("up_to_date")),
                         runtime=runtime)

    def build(self, spec_yaml: str, *, force: bool = False) -> Runtime:
        """Build and wait (for callers without a stream to show)."""
        handle = self.start_build(spec_yaml, force=force)
        self.engine.handle(handle.run_id).wait()
        return self.get(handle.ref)

    # -- queries --------------------------------------------------------------------------------
    def list(self) -> list[Runtime]:
        return [Runtime.from_record(r) for r in self.images.pc.images.list() if r.ref.startswith(IMAGE_PREFIX)]

    def get(self, name: str) -> Runtime:
        return Runtime.from_record(self.images.get(self.resolve(name)))

    def resolve(self, name: str) -> str:
        """``NAME[@VERSION]`` -> the image that implements it (NAME alone: its newest build)."""
        base, version = parse_runtime_name(name)
        if version is not None:
            ref = image_ref(f"{base}@{version}")
            if self.images.pc.images.find(ref) is None:
                raise NotFound(f"no runtime {base}@{version} (see `capsa runtime ls`,"
                               " or build it with `capsa runtime build SPEC.yaml`)")
            return ref
        versions = [r for r in self.list() if r.name == base]
        if not versions:
            raise NotFound(f"no runtime named {base} (see `capsa runtime ls`)")
        return max(versions, key=lambda r: r.created_ns).image_ref

    def image_for(self, name: str) -> str | None:
        """Like :meth:`resolve`, None when unknown (the workflow validator's lookup)."""
        try:
            return self.resolve(name)
        except (NotFound, InvalidArgument):
            return None

    def history(self, name: str, limit: int = 10) -> list[Any]:
        base, version = parse_runtime_name(name, need_version=True)
        return self.engine.history(resource_id=f"{base}@{version}", machine=BUILD, limit=limit)

    def _find(self, ref: str) -> Runtime | None:
        rec = self.images.pc.images.find(ref) if ref else None
        return Runtime.from_record(rec) if rec is not None else None

    # -- removal --------------------------------------------------------------------------------
    def remove(self, name: str, *, force: bool = False) -> str:
        """Remove a runtime; refused while a job runs in it or it is being built."""
        base, version = parse_runtime_name(name, need_version=True)
        ref = f"{base}@{version}"
        for run in self.engine.history(resource_id=ref, machine=BUILD, limit=5):
            if run.state in ACTIVE_STATES:
                raise Conflict(f"runtime {ref} is being built (run {run.run_id}); wait for the build to end")
        rec = self.images.get(self.resolve(ref))
        store = self.images.pc.images
        running = store.users(rec.digest, running_only=True)
        if running:
            ids = ", ".join(u["job_id"][:12] for u in running)
            raise Conflict(f"runtime {ref} is in use by running job(s) {ids}; stop them first")
        ended = store.users(rec.digest, running_only=False)
        if ended and not force:
            ids = ", ".join(u["job_id"][:12] for u in ended)
            raise Conflict(f"runtime {ref} is used by ended job(s) {ids}; remove them (capsa rm) or use --force")
        for user in ended:
            self.images.job_removed(user["job_id"])   # their root snapshots stand on the runtime
        store.delete(rec.ref)
        if not store.refs_for_digest(rec.digest):
            self.builder.drop_chain(rec.chain)
        return ref


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(_READ_CHUNK)
    except FileNotFoundError:
        return b""
