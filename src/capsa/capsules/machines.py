"""Capsule push, pull and GC as durable state-machine runs (the image pull's engine, docs/adr/0008).

    capsule.push (queue download)  push       one run per (NAME@VERSION, destination)
    capsule.pull (queue download)  pull       one run per source location
    capsule.gc   (no queue)        collect    one run at a time for the whole store

Runs are deduplicated by resource (two pulls of one location share one download), survive
``kill -9`` (the engine resumes them at the next start; a transition redoes its work from a
fresh staging directory, and a pull whose version is already stored and intact is a no-op),
can be canceled (``Engine.cancel``: the download stops between chunks), and show in the run
history. :class:`CapsuleGcPolicy` starts a ``capsule.gc`` run every ``interval_s`` with the
configured ``older_than`` (pins and attachments are always respected by the collector).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from capsa.capsules.model import CapsuleVersion, GcReport
from capsa.capsules.store import CapsuleStore
from capsa.fsm import Context, Engine, Machine, decode

if TYPE_CHECKING:
    from capsa.capsules.distribution import CapsuleDistribution, PushResult

__all__ = [
    "CAPSULE_GC",
    "CAPSULE_PULL",
    "CAPSULE_PUSH",
    "CapsuleGcPolicy",
    "GcRequest",
    "PullRequest",
    "PushRequest",
    "register_capsule_machines",
    "start_gc",
    "start_pull",
    "start_push",
]

log = logging.getLogger("capsa.capsules")

CAPSULE_PUSH = "capsule.push"
CAPSULE_PULL = "capsule.pull"
CAPSULE_GC = "capsule.gc"
_GC_RESOURCE = "capsules"


@dataclass
class PushRequest:
    ref: str
    destination: str
    insecure: bool = False


@dataclass
class PushDone:
    location: str
    digest: str
    size: int
    manifest_digest: str = ""


@dataclass
class PullRequest:
    source: str
    insecure: bool = False


@dataclass
class Pulled:
    name: str
    version: str
    digest: str


@dataclass
class GcRequest:
    unused: bool = True
    older_than_s: float | None = None
    dry_run: bool = False


@dataclass
class GcDone:
    removed_versions: list[str]
    removed_content: list[str]
    bytes_freed: int
    dry_run: bool


def register_capsule_machines(engine: Engine, dist: CapsuleDistribution) -> None:
    def push(ctx: Context, req: PushRequest) -> PushDone:
        ctx.check_cancel()
        done = dist.push_now(req.ref, req.destination, insecure=req.insecure)
        return PushDone(done.location, done.digest, done.size, done.manifest_digest)

    def pull(ctx: Context, req: PullRequest) -> Pulled:
        got = dist.pull_now(req.source, insecure=req.insecure, cancel=ctx.cancel)
        return Pulled(got.name, got.version, got.digest)

    def collect(ctx: Context, req: GcRequest) -> GcDone:
        older = timedelta(seconds=req.older_than_s) if req.older_than_s else None
        report = dist.store.gc(unused=req.unused, older_than=older, dry_run=req.dry_run)
        return GcDone(list(report.removed_versions), list(report.removed_content), report.bytes_freed,
                      report.dry_run)

    engine.register(Machine.define(CAPSULE_PUSH, queue="download").start("push", push).end())
    engine.register(Machine.define(CAPSULE_PULL, queue="download").start("pull", pull).end())
    engine.register(Machine.define(CAPSULE_GC).start("collect", collect).end())


def start_push(engine: Engine, ref: str, destination: str, *, insecure: bool = False) -> PushResult:
    from capsa.capsules.distribution import PushResult

    info = engine.start(CAPSULE_PUSH, f"{ref} -> {destination}", "push",
                        PushRequest(ref, destination, insecure)).wait()
    done = decode(PushDone, info.output)
    return PushResult(location=done.location, digest=done.digest, size=done.size,
                      manifest_digest=done.manifest_digest)


def start_pull(engine: Engine, store: CapsuleStore, source: str, *, insecure: bool = False) -> CapsuleVersion:
    info = engine.start(CAPSULE_PULL, source, "pull", PullRequest(source, insecure)).wait()
    got = decode(Pulled, info.output)
    return store.get(got.name, got.version)


def start_gc(engine: Engine, request: GcRequest) -> GcReport:
    info = engine.start(CAPSULE_GC, _GC_RESOURCE, "gc", request).wait()
    done = decode(GcDone, info.output)
    return GcReport(removed_versions=tuple(done.removed_versions), removed_content=tuple(done.removed_content),
                    bytes_freed=done.bytes_freed, dry_run=done.dry_run)


class CapsuleGcPolicy:
    """server.yaml ``capsules.gc``: a ``capsule.gc`` run every ``interval_s`` (a daemon thread)."""

    def __init__(self, engine: Engine, *, interval_s: float, older_than_s: float | None, unused: bool = True) -> None:
        self.engine = engine
        self.request = GcRequest(unused=unused, older_than_s=older_than_s)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="capsa-capsule-gc", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def close(self) -> None:
        """The daemon's shutdown verb for its background parts."""
        self.stop()

    def run_once(self) -> GcReport:
        report = start_gc(self.engine, self.request)
        if report.removed_versions or report.removed_content:
            log.info("capsule gc removed %d versions, %d content trees, %d bytes",
                     len(report.removed_versions), len(report.removed_content), report.bytes_freed)
        return report

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:  # one failed collection must not stop the policy
                log.exception("scheduled capsule gc failed")
