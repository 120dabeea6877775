"""The image pull, as durable state machines (image ADR-006/-008).

Reading the declarations tells the whole life of a pull::

    image.pull   (no queue)        resolve -> fetch -> unpack -> register
    blob.fetch   (queue download)  download          one run per layer blob, shared between images
    layer.unpack (queue unpack)    apply             one run per snapshot chain key

``image.pull`` fans out one ``blob.fetch`` run per layer (so layers download in
parallel, at most ``download`` at a time across all pulls, and a blob shared by
two images is fetched once: the engine joins runs for the same resource) and then
one ``layer.unpack`` per layer, bottom first. Every transition checks real state
before working (blob present and verified? snapshot committed?) and hands off
when the work is already done, so a resumed or repeated pull converges without
redoing anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsa.errors import CapsaError, ChecksumMismatch, FailedPrecondition, NotFound, Unavailable
from capsa.fsm import Abort, Context, Engine, Handoff, Machine
from capsa.images.content import ContentStore
from capsa.images.oci import Platform
from capsa.images.reference import Reference, parse_reference
from capsa.images.sources import BlobDescriptor, RegistryConfig, S3Config, open_source
from capsa.images.store import ImageRecord, ImageStore
from capsa.images.unpack import UnpackBudget, UnpackLimits, apply_layer
from capsa.snapshots import ApplyStyle, Snapshotter

__all__ = ["PullContext", "chain_key", "register_machines"]

PULL = "image.pull"
FETCH = "blob.fetch"
UNPACK = "layer.unpack"


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


def chain_key(parent: str | None, layer_digest: str) -> str:
    """Snapshot key of a layer applied on ``parent``: identical chains share snapshots."""
    return "sha256:" + hashlib.sha256(f"{parent or ''} {layer_digest}".encode()).hexdigest()


def _desc_to_json(desc: BlobDescriptor) -> dict[str, Any]:
    return {"media_type": desc.media_type, "size": desc.size, "digest": desc.digest, "locator": desc.locator,
            "compression": str(desc.compression.value) if hasattr(desc.compression, "value") else str(desc.compression),
            "dedupe_hint": desc.dedupe_hint, "annotations": dict(desc.annotations)}


def _desc_from_json(data: dict[str, Any]) -> BlobDescriptor:
    from capsa.images.oci import Compression

    return BlobDescriptor(media_type=data["media_type"], size=int(data["size"]), digest=data.get("digest"),
                          locator=data["locator"], compression=Compression(data.get("compression") or "none"),
                          dedupe_hint=data.get("dedupe_hint"), annotations=data.get("annotations") or {})


def register_machines(engine: Engine, pc: PullContext) -> None:
    def source_for(ref: Reference, insecure: bool) -> Any:
        registry = pc.registry
        if insecure and ref.registry:
            registry = dataclasses.replace(registry, insecure=registry.insecure | {ref.registry})
        return open_source(ref, registry=registry, s3=pc.s3)

    # -- image.pull ----------------------------------------------------------------------------
    def resolve(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        ref = parse_reference(req["ref"])
        platform = Platform.parse(req["platform"]) if req.get("platform") else None
        source = source_for(ref, bool(req.get("insecure")))
        ctx.progress(phase="resolve")
        resolved = source.resolve(ref, platform)
        if resolved.manifest_bytes is not None and resolved.manifest_digest:
            pc.content.put_bytes(resolved.manifest_bytes, expected=resolved.manifest_digest,
                                 media_type=resolved.manifest_media_type)
        if resolved.config_digest:
            pc.content.put_bytes(resolved.config_bytes, expected=resolved.config_digest)
        layers = [_desc_to_json(d) for d in resolved.layers]
        out = {"ref": ref.canonical, "insecure": bool(req.get("insecure")), "platform": str(resolved.platform),
               "manifest_digest": resolved.manifest_digest, "config": json.loads(resolved.config_bytes),
               "layers": layers, "source": ref.kind.value, "expected_digest": req.get("expected_digest") or None,
               "always": bool(req.get("always"))}
        existing = pc.images.find(ref.canonical)
        if (existing is not None and not out["always"] and resolved.manifest_digest
                and existing.digest == resolved.manifest_digest and _image_intact(pc, existing)):
            raise Handoff(existing.to_dict())
        return out

    def fetch(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        ctx.progress(phase="fetch")
        handles = [
            ctx.engine.start(FETCH, _desc_from_json(layer).ingest_ref, "fetch",
                             {"ref": req["ref"], "insecure": req["insecure"], "layer": layer,
                              "expected_digest": req.get("expected_digest") if len(req["layers"]) == 1 else None})
            for layer in req["layers"]
        ]
        digests: list[dict[str, Any]] = []
        errors: list[CapsaError] = []
        for handle in handles:
            try:
                info = handle.wait()
                digests.append(info.output)
            except CapsaError as exc:
                errors.append(exc)
        if errors:
            raise _no_second_retry(errors[0])
        for layer, got in zip(req["layers"], digests, strict=True):
            layer["digest"] = got["digest"]
            layer["size"] = got["size"]
        return req

    def unpack(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        ctx.progress(phase="unpack")
        parent: str | None = None
        chain: list[str] = []
        entries = 0
        total = 0
        # Registry and local images carry the uncompressed digests of their layers; check them
        # while unpacking (S3 images have synthesised configs, so theirs are not authoritative).
        diff_ids = ((req.get("config") or {}).get("rootfs") or {}).get("diff_ids") or []
        trusted_diff_ids = bool(req.get("manifest_digest")) and len(diff_ids) == len(req["layers"])
        for index, layer in enumerate(req["layers"]):
            key = chain_key(parent, layer["digest"])
            try:
                info = ctx.engine.start(UNPACK, key, "unpack", {
                    "key": key, "parent": parent, "digest": layer["digest"], "media_type": layer["media_type"],
                    "entries_so_far": entries, "bytes_so_far": total,
                    "diff_id": diff_ids[index] if trusted_diff_ids else None,
                }).wait()
            except CapsaError as exc:
                raise _no_second_retry(exc) from None
            stats = info.output or {}
            entries += int(stats.get("entries", 0))
            total += int(stats.get("bytes", 0))
            chain.append(key)
            parent = key
        if not chain:
            raise FailedPrecondition(f"image {req['ref']} has no layers")
        req["chain"] = chain
        req["unpacked_size"] = total
        return req

    def register(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        ctx.progress(phase="register")
        digest = req.get("manifest_digest")
        if not digest:  # S3 images carry no manifest: identify them by their layers
            digest = "sha256:" + hashlib.sha256(" ".join(layer["digest"] for layer in req["layers"]).encode()).hexdigest()
        rec = ImageRecord(
            ref=req["ref"], digest=digest, source=req["source"], platform=req.get("platform", ""),
            config=req["config"],
            layers=[{"digest": la["digest"], "size": la["size"], "media_type": la["media_type"]}
                    for la in req["layers"]],
            chain=req["chain"], top_snapshot=req["chain"][-1], size=sum(int(la["size"]) for la in req["layers"]),
            created_ns=time.time_ns(), unpacked_size=int(req.get("unpacked_size", 0)),
        )
        pc.images.put(rec)
        return rec.to_dict()

    engine.register(Machine.define(PULL).start("resolve", resolve).then("fetch", fetch)
                    .then("unpack", unpack).then("register", register).end())

    # -- blob.fetch ------------------------------------------------------------------------------
    def download(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        desc = _desc_from_json(req["layer"])
        expected = desc.digest or req.get("expected_digest")
        if expected and pc.content.exists(expected):
            _drop_ingest(pc, desc.ingest_ref)
            raise Handoff({"digest": expected, "size": pc.content.info(expected).size})
        if desc.dedupe_hint:
            known = pc.content.lookup_hint(desc.dedupe_hint)
            # A hint that disagrees with the digest the caller demands is no shortcut: download
            # and let the commit's verification fail (or pass) on the real bytes.
            if known is not None and pc.content.exists(known) and (not expected or known == expected):
                _drop_ingest(pc, desc.ingest_ref)
                raise Handoff({"digest": str(known), "size": pc.content.info(known).size})
        source = source_for(parse_reference(req["ref"]), bool(req.get("insecure")))
        writer = pc.content.writer(desc.ingest_ref, expected=expected, expected_size=desc.size)
        try:
            source.fetch_blob(desc, writer, progress=lambda done, total: ctx.progress(bytes=done, total=total or desc.size),
                              cancel=ctx.cancel, timeout_s=pc.download_timeout_s)
            info = writer.commit(desc.size, expected, media_type=desc.media_type)
        except ChecksumMismatch:
            writer.abort()  # nothing of a corrupt blob is kept
            raise
        finally:
            writer.close()
        if desc.dedupe_hint:
            pc.content.record_hint(desc.dedupe_hint, info.digest)
        return {"digest": str(info.digest), "size": info.size}

    engine.register(Machine.define(FETCH, queue="download").start("download", download).end())

    # -- layer.unpack --------------------------------------------------------------------------------
    def apply(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        key, parent = req["key"], req.get("parent")
        sn = pc.snapshotter
        try:
            if sn.stat(key).kind.value == "committed":
                usage = sn.usage(key)
                raise Handoff({"entries": usage.inodes, "bytes": usage.size})
        except NotFound:
            pass
        extract = f"extract-{key}"
        try:
            sn.remove(extract)  # a partial unpack from before a crash is never trusted
        except NotFound:
            pass
        if not pc.content.exists(req["digest"]):
            raise FailedPrecondition(f"layer {req['digest']} is not in the content store")
        sn.prepare(extract, parent)
        budget = UnpackBudget(entries=int(req.get("entries_so_far", 0)), bytes=int(req.get("bytes_so_far", 0)))
        mode = "overlay" if sn.apply_style == ApplyStyle.OVERLAY_UPPER else "apply"
        try:
            with sn.writable(extract) as tree:
                stats = apply_layer(pc.content.path(req["digest"]), Path(tree), media_type=req.get("media_type"),
                                    limits=pc.limits, budget=budget, whiteout_mode=mode,
                                    expected_diff_id=req.get("diff_id"),
                                    opaque_xattr=getattr(sn, "opaque_xattr", "trusted.overlay.opaque"))
            sn.commit(key, extract)
        except BaseException:
            try:
                sn.remove(extract)  # the partial snapshot goes, whatever went wrong
            except CapsaError:
                pass
            raise
        return {"entries": stats.entries, "bytes": stats.bytes}

    engine.register(Machine.define(UNPACK, queue="unpack").start("apply", apply).end())


def _no_second_retry(exc: CapsaError) -> Exception:
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


def _image_intact(pc: PullContext, rec: ImageRecord) -> bool:
    try:
        return all(pc.snapshotter.stat(key).kind.value == "committed" for key in rec.chain)
    except NotFound:
        return False
