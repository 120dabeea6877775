"""The image pull, as durable state machines (image ADR-006/-008, docs/adr/0008).

Reading the declarations tells the whole life of a pull::

    image.pull   (no queue)        resolve -> fetch -> unpack -> register
    blob.fetch   (queue download)  download          one run per layer blob, shared between images
    layer.unpack (queue unpack)    apply             one run per snapshot chain key

``fetch`` starts one ``blob.fetch`` run per layer (at most ``download`` at a time across all
pulls; a blob shared by two images is fetched once: the engine joins runs for the same
resource). ``unpack`` is a pipeline (:mod:`capsa.images.pipeline`): a layer's ``layer.unpack``
starts as soon as its blob is stored, while later blobs still download; with a snapshotter
whose layers unpack without their parent (overlay) layers unpack in parallel and are attached
and committed bottom-up. Every transition checks that what is "already there" is still
*valid* (:mod:`capsa.images.validity`), not merely present, before handing off; a broken
resource is redone with a ``repair`` event saying why.

Each transition is a named function over the typed messages of :mod:`capsa.images.pull_types`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from capsa.errors import (
    CapsaError,
    ChecksumMismatch,
    FailedPrecondition,
    LimitExceeded,
    NotFound,
    Timeout,
    Unavailable,
    UnsafeArchive,
)
from capsa.fsm import Abort, Context, Engine, Handoff, Machine, RunHandle
from capsa.images.content import ContentStore, DownloadClocks
from capsa.images.oci import Platform
from capsa.images.pull_types import (
    FetchRequest,
    FetchResult,
    LayerDesc,
    PullPlan,
    PullRequest,
    UnpackRequest,
    UnpackResult,
)
from capsa.images.reference import Reference, parse_reference
from capsa.images.sources import RegistryConfig, S3Config, Source, open_source
from capsa.images.store import ImageRecord, ImageStore
from capsa.images.unpack import UnpackBudget, UnpackLimits, apply_layer, verify_layout
from capsa.images.validity import BlobPolicy, blob_problem, chain_problem, snapshot_problem
from capsa.snapshots import ApplyStyle, Kind, Snapshotter

__all__ = ["FETCH", "PULL", "UNPACK", "PullContext", "PullObserver", "chain_key", "extract_key", "register_machines"]

log = logging.getLogger("capsa.images")

PULL = "image.pull"
FETCH = "blob.fetch"
UNPACK = "layer.unpack"

#: labels of a detached ``extract-*`` snapshot whose unpack finished (the pull attaches it)
LABEL_UNPACKED = "capsa/unpacked"
LABEL_ROOT_META = "capsa/root-meta"
LABEL_ENTRIES = "capsa/entries"
LABEL_BYTES = "capsa/bytes"


@dataclass
class PullContext:
    """What the transitions need; one per daemon."""

    content: ContentStore
    images: ImageStore
    snapshotter: Snapshotter
    registry: RegistryConfig
    s3: S3Config
    limits: UnpackLimits
    download_timeout_s: float = 300.0
    """A download fails after this long without a byte (a stall), across its retries."""
    download_deadline_s: float = 3600.0
    """Every blob of one image must be stored within this long of the pull's start."""
    verify_policy: BlobPolicy = BlobPolicy.SIZE
    """How a stored blob is checked before it is reused: size always; ``full`` re-hashes it."""
    pipeline: bool = True
    """Start a layer's unpack as soon as its blob is stored (False: all downloads first)."""
    observer: PullObserver | None = None
    """Told about durations and refusals (``capsa.metrics.prometheus.PipelineStats``), or None."""
    _link_locks: dict[str, threading.Lock] = field(default_factory=dict, repr=False)
    _link_guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def link_lock(self, key: str) -> threading.Lock:
        """One lock per chain key: two pulls sharing a layer attach and commit it once."""
        with self._link_guard:
            return self._link_locks.setdefault(key, threading.Lock())

    @property
    def seen(self) -> PullObserver:
        return self.observer if self.observer is not None else _NO_OBSERVER


class PullObserver(Protocol):
    """What monitoring learns from the pipeline (image ADR-005/-008 "monitoring")."""

    def pull_seconds(self, seconds: float) -> None: ...

    def unpack_seconds(self, seconds: float) -> None: ...

    def unpack_refused(self, error_class: str, limit: str) -> None: ...

    def limit_refused(self, limit: str) -> None: ...


class _NoObserver:
    def pull_seconds(self, seconds: float) -> None:
        return None

    def unpack_seconds(self, seconds: float) -> None:
        return None

    def unpack_refused(self, error_class: str, limit: str) -> None:
        return None

    def limit_refused(self, limit: str) -> None:
        return None


_NO_OBSERVER = _NoObserver()


def chain_key(parent: str | None, layer_digest: str) -> str:
    """Snapshot key of a layer applied on ``parent``: identical chains share snapshots."""
    return "sha256:" + hashlib.sha256(f"{parent or ''} {layer_digest}".encode()).hexdigest()


def extract_key(key: str) -> str:
    """The active snapshot a layer is unpacked into before it is committed as ``key``."""
    return f"extract-{key}"


def register_machines(engine: Engine, pc: PullContext) -> None:
    from capsa.images.pipeline import unpack_image

    def resolve_t(ctx: Context, req: PullRequest) -> PullPlan:
        return resolve(pc, ctx, req)

    def fetch_t(ctx: Context, plan: PullPlan) -> PullPlan:
        return start_fetches(pc, ctx, plan)

    def unpack_t(ctx: Context, plan: PullPlan) -> PullPlan:
        return unpack_image(pc, ctx, plan)

    def register_t(ctx: Context, plan: PullPlan) -> dict[str, Any]:
        return register(pc, ctx, plan)

    def download_t(ctx: Context, req: FetchRequest) -> FetchResult:
        return download(pc, ctx, req)

    def apply_t(ctx: Context, req: UnpackRequest) -> UnpackResult:
        return apply(pc, ctx, req)

    engine.register(Machine.define(PULL).start("resolve", resolve_t).then("fetch", fetch_t)
                    .then("unpack", unpack_t).then("register", register_t).end())
    engine.register(Machine.define(FETCH, queue="download").start("download", download_t).end())
    engine.register(Machine.define(UNPACK, queue="unpack").start("apply", apply_t).end())


def source_for(pc: PullContext, ref: Reference, insecure: bool) -> Source:
    registry = pc.registry
    if insecure and ref.registry:
        registry = dataclasses.replace(registry, insecure=registry.insecure | {ref.registry})
    return open_source(ref, registry=registry, s3=pc.s3)


# -- image.pull -------------------------------------------------------------------------------------
def resolve(pc: PullContext, ctx: Context, req: PullRequest) -> PullPlan:
    """Read manifest and config; hand off when the same image is stored and still valid."""
    ref = parse_reference(req.ref)
    platform = Platform.parse(req.platform) if req.platform else None
    source = source_for(pc, ref, req.insecure)
    ctx.progress(phase="resolve", pull_started_at=ctx.recall("pull_started_at") or time.time())
    resolved = source.resolve(ref, platform)
    if resolved.manifest_bytes is not None and resolved.manifest_digest:
        pc.content.put_bytes(resolved.manifest_bytes, expected=resolved.manifest_digest,
                             media_type=resolved.manifest_media_type)
    if resolved.config_digest:
        pc.content.put_bytes(resolved.config_bytes, expected=resolved.config_digest)
    plan = PullPlan(ref=ref.canonical, insecure=req.insecure, platform=str(resolved.platform),
                    manifest_digest=str(resolved.manifest_digest) if resolved.manifest_digest else None,
                    config=json.loads(resolved.config_bytes), layers=[LayerDesc.of(d) for d in resolved.layers],
                    source=ref.kind.value, expected_digest=req.expected_digest or None, always=req.always,
                    download_deadline_at=time.time() + pc.download_deadline_s)
    existing = pc.images.find(ref.canonical)
    if (existing is not None and not req.always and plan.manifest_digest
            and existing.digest == plan.manifest_digest):
        problem = image_problem(pc, existing)
        if problem is None:
            raise Handoff(existing.to_dict())
        ctx.repair(f"image {existing.ref} is stored but damaged, pulling it again: {problem}")
    return plan


def image_problem(pc: PullContext, rec: ImageRecord, policy: BlobPolicy | None = None) -> str | None:
    """Why a stored image cannot be used as it is: its snapshots, then its layer blobs."""
    problem = chain_problem(pc.snapshotter, rec.chain)
    if problem is not None:
        return problem
    for layer in rec.layers:
        problem = blob_problem(pc.content, layer["digest"], policy or pc.verify_policy)
        if problem is not None:
            return problem
    return None


def start_fetches(pc: PullContext, ctx: Context, plan: PullPlan) -> PullPlan:
    """Start every layer's download; they run on the download queue while unpack proceeds."""
    ctx.progress(phase="fetch")
    plan.fetch_runs = [h.run_id for h in fetch_handles(ctx, plan)]
    return plan


def fetch_handles(ctx: Context, plan: PullPlan) -> list[RunHandle]:
    """The blob.fetch run of each layer: the one ``fetch`` started, else a new (or joined) one."""
    only = plan.expected_digest if len(plan.layers) == 1 else None
    handles: list[RunHandle] = []
    for index, layer in enumerate(plan.layers):
        if index < len(plan.fetch_runs):
            with contextlib.suppress(NotFound):
                handles.append(ctx.engine.handle(plan.fetch_runs[index]))
                continue
        handles.append(ctx.engine.start(FETCH, layer.descriptor().ingest_ref, "fetch",
                                        FetchRequest(ref=plan.ref, insecure=plan.insecure, layer=layer,
                                                     expected_digest=only, deadline_at=plan.download_deadline_at)))
    return handles


def register(pc: PullContext, ctx: Context, plan: PullPlan) -> dict[str, Any]:
    ctx.progress(phase="register")
    digest = plan.manifest_digest
    if not digest:  # S3 images carry no manifest: identify them by their layers
        digest = "sha256:" + hashlib.sha256(" ".join(str(la.digest) for la in plan.layers).encode()).hexdigest()
    rec = ImageRecord(
        ref=plan.ref, digest=digest, source=plan.source, platform=plan.platform, config=plan.config,
        layers=[{"digest": la.digest, "size": la.size, "media_type": la.media_type} for la in plan.layers],
        chain=plan.chain, top_snapshot=plan.chain[-1], size=sum(la.size for la in plan.layers),
        created_ns=time.time_ns(), unpacked_size=plan.unpacked_size,
    )
    pc.images.put(rec)
    started = ctx.recall("pull_started_at")
    if started:
        pc.seen.pull_seconds(max(0.0, time.time() - float(started)))
    return rec.to_dict()


# -- blob.fetch ----------------------------------------------------------------------------------------
def download(pc: PullContext, ctx: Context, req: FetchRequest) -> FetchResult:
    desc = req.layer.descriptor()
    expected = str(desc.digest) if desc.digest else req.expected_digest
    if expected:
        _reuse_blob(pc, ctx, expected, desc.ingest_ref)
    if desc.dedupe_hint:
        known = pc.content.lookup_hint(desc.dedupe_hint)
        # A hint that disagrees with the digest the caller demands is no shortcut: download
        # and let the commit's verification fail (or pass) on the real bytes.
        if known is not None and (not expected or str(known) == expected):
            _reuse_blob(pc, ctx, str(known), desc.ingest_ref)
    source = source_for(pc, parse_reference(req.ref), req.insecure)
    writer = pc.content.writer(desc.ingest_ref, expected=expected, expected_size=desc.size)
    clocks = DownloadClocks(stall_s=pc.download_timeout_s, last_byte_at=ctx.recall("last_byte_at"),
                            deadline_at=req.deadline_at)

    def progress(done: int, total: int | None) -> None:
        ctx.progress(bytes=done, total=total or desc.size, last_byte_at=time.time())

    try:
        source.fetch_blob(desc, writer, progress=progress, cancel=ctx.cancel, clocks=clocks)
        info = writer.commit(desc.size, expected, media_type=desc.media_type)
    except ChecksumMismatch:
        writer.abort()  # nothing of a corrupt blob is kept
        raise
    except Timeout as exc:
        if exc.detail.get("clock") in ("stall", "deadline"):
            pc.seen.limit_refused(f"download_{exc.detail['clock']}")
            raise Abort(exc) from None  # the seed's limits are final; the ingest stays for later
        raise
    finally:
        writer.close()
    if desc.dedupe_hint:
        pc.content.record_hint(desc.dedupe_hint, info.digest)
    return FetchResult(digest=str(info.digest), size=info.size)


def _reuse_blob(pc: PullContext, ctx: Context, digest: str, ingest_ref: str) -> None:
    """Hand off when ``digest`` is stored and valid; record why when it is stored but broken."""
    try:
        pc.content.info(digest)
    except NotFound:
        return
    problem = blob_problem(pc.content, digest, pc.verify_policy)
    if problem is None:
        _drop_ingest(pc, ingest_ref)
        raise Handoff(FetchResult(digest=digest, size=pc.content.info(digest).size))
    ctx.repair(f"fetching again: {problem}")


# -- layer.unpack ----------------------------------------------------------------------------------------
def apply(pc: PullContext, ctx: Context, req: UnpackRequest) -> UnpackResult:
    sn = pc.snapshotter
    key, extract = req.key, extract_key(req.key)
    _reuse_snapshot(pc, ctx, req)
    with contextlib.suppress(NotFound):
        sn.remove(extract)  # a partial unpack from before a crash is never trusted
    problem = blob_problem(pc.content, req.digest, BlobPolicy.SIZE)
    if problem is not None:
        raise FailedPrecondition(f"layer {req.digest} cannot be unpacked: {problem}")
    sn.prepare(extract, None if req.detached else req.parent)
    budget = UnpackBudget.since(req.started_at or time.time(), entries=req.entries_so_far, bytes=req.bytes_so_far)
    mode = "overlay" if sn.apply_style == ApplyStyle.OVERLAY_UPPER else "apply"
    began = time.monotonic()
    try:
        with sn.writable(extract) as tree:
            stats = apply_layer(pc.content.path(req.digest), Path(tree), media_type=req.media_type,
                                limits=pc.limits, budget=budget, whiteout_mode=mode,
                                expected_diff_id=req.diff_id, opaque_xattr=sn.opaque_xattr)
            unpacked = time.monotonic()
            verify_layout(Path(tree), allow_devices=pc.limits.allow_devices)  # image ADR-004 layer 5
            verified = time.monotonic()
        result = UnpackResult(entries=stats.entries, bytes=stats.bytes, root_meta=stats.root_meta,
                              unpack_s=unpacked - began, verify_s=verified - unpacked, committed=not req.detached)
        if req.detached:
            sn.update(extract, {LABEL_UNPACKED: req.digest, LABEL_ROOT_META: "1" if stats.root_meta else "0",
                                LABEL_ENTRIES: str(stats.entries), LABEL_BYTES: str(stats.bytes)})
        else:
            sn.commit(key, extract)
    except BaseException as exc:
        if isinstance(exc, UnsafeArchive | LimitExceeded | ChecksumMismatch):
            refused(pc, req, exc)
        with contextlib.suppress(CapsaError):
            sn.remove(extract)  # the partial snapshot goes, whatever went wrong
        raise
    pc.seen.unpack_seconds(result.unpack_s + result.verify_s)
    return result


def _reuse_snapshot(pc: PullContext, ctx: Context, req: UnpackRequest) -> None:
    """Hand off when the layer's snapshot (or, detached, its finished extract) is valid."""
    sn = pc.snapshotter
    try:
        info = sn.stat(req.key)
    except NotFound:
        info = None
    if info is not None:
        problem = snapshot_problem(sn, req.key)
        if problem is None:
            usage = sn.usage(req.key)
            raise Handoff(UnpackResult(entries=usage.inodes, bytes=usage.size))
        ctx.repair(f"unpacking again: {problem}")
        drop_snapshot_tree(sn, req.key)
        return
    if not req.detached:
        return
    try:
        ext = sn.stat(extract_key(req.key))
    except NotFound:
        return
    labels = ext.labels
    if (ext.kind is Kind.ACTIVE and labels.get(LABEL_UNPACKED) == req.digest and ext.parent in (None, req.parent)
            and sn.present(ext.key)):
        raise Handoff(UnpackResult(entries=int(labels.get(LABEL_ENTRIES, 0)), bytes=int(labels.get(LABEL_BYTES, 0)),
                                   root_meta=labels.get(LABEL_ROOT_META) == "1", committed=False))


def drop_snapshot_tree(sn: Snapshotter, key: str) -> None:
    """Remove a broken snapshot and everything built on it, top-down (they are broken too).

    A job's own snapshot on it stops the removal: that job runs on a damaged tree and must
    be removed first, which the error says.
    """
    infos = sn.walk()
    children: dict[str, list[str]] = {}
    for info in infos:
        if info.parent:
            children.setdefault(info.parent, []).append(info.key)
    order: list[str] = []
    todo = [key]
    while todo:
        current = todo.pop()
        order.append(current)
        todo.extend(children.get(current, []))
    for victim in reversed(order):
        try:
            sn.remove(victim)
        except NotFound:
            continue
        except CapsaError as exc:
            raise FailedPrecondition(f"snapshot {key} is damaged and cannot be rebuilt while {victim} stands on it"
                                     f" ({exc.message}); remove the jobs using it and pull again") from exc


def refused(pc: PullContext, req: UnpackRequest, exc: CapsaError) -> None:
    """One structured warning per security or limit refusal (image ADR-004 "clear logging")."""
    entry = str(exc.detail.get("entry", ""))
    rule = str(exc.detail.get("limit") or "")
    if not rule:
        rule = exc.message
        for prefix in (f"{entry}: ", f"{entry!r}: "):
            if entry and rule.startswith(prefix):
                rule = rule[len(prefix):]
                break
    name = entry[1:-1] if len(entry) >= 2 and entry[0] == entry[-1] and entry[0] in "'\"" else entry  # repr'd
    log.warning("unpack refused: image=%s layer=%s entry=%s class=%s rule=%s",
                json.dumps(req.ref), req.digest, json.dumps(name), exc.code, json.dumps(rule))
    pc.seen.unpack_refused(exc.code, str(exc.detail.get("limit") or ""))


def no_second_retry(exc: CapsaError) -> Exception:
    """A child run's final error, made final for the parent too.

    The blob.fetch / layer.unpack run already retried with backoff; retrying the parent's
    transition would start the child over and multiply the attempts (max_attempts squared).
    Non-retryable errors (Canceled included) already end the parent as they are.
    """
    return Abort(exc) if exc.retryable else exc


def _drop_ingest(pc: PullContext, ref: str) -> None:
    """Delete what a crash between a blob's publish and its ingest's removal left behind.

    The blob is stored, so the ingest is garbage; a live writer (Unavailable) keeps its own.
    """
    with contextlib.suppress(NotFound, Unavailable):
        pc.content.abort(ref)
