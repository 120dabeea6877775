"""``capsa image verify``: re-check a stored image completely, and repair it from its source.

Unlike the checks a pull makes before reusing something (:mod:`capsa.images.validity`, size
by default), verify always re-hashes: the manifest and config blobs and every layer blob
against their digests, every layer's uncompressed content against the diff_id its config
records (registry and local images; S3 configs are synthesised), and every snapshot of the
chain for being committed with its storage present. A corrupt blob is removed as it is
found (it must never be used); ``repair`` then pulls the image again from its recorded
reference, which re-fetches only what is missing and rebuilds only broken snapshots.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from capsa.errors import CapsaError, ChecksumMismatch, NotFound
from capsa.images.store import ImageRecord
from capsa.images.unpack import layer_diff_id
from capsa.images.validity import snapshot_problem

if TYPE_CHECKING:
    from capsa.images.pull import PullContext

__all__ = ["ImageReport", "verify_image"]


@dataclass
class ImageReport:
    ref: str
    digest: str
    ok: bool = True
    blobs_checked: int = 0
    diff_ids_checked: int = 0
    snapshots_checked: int = 0
    problems: list[str] = field(default_factory=list)
    repaired: bool = False
    repair_error: str = ""

    def problem(self, text: str) -> None:
        self.ok = False
        self.problems.append(text)


def verify_image(pc: PullContext, rec: ImageRecord) -> ImageReport:
    report = ImageReport(ref=rec.ref, digest=rec.digest)
    blobs: list[str] = []
    if rec.source != "s3":  # S3 images have no manifest; their digest names their layers
        blobs.append(rec.digest)
        config_digest = _config_digest(pc, rec)
        if config_digest:
            blobs.append(config_digest)
    layer_ok: list[bool] = []
    for digest in blobs + [str(layer["digest"]) for layer in rec.layers]:
        ok = _verify_blob(pc, digest, report)
        if digest not in blobs:
            layer_ok.append(ok)
    diff_ids = ((rec.config or {}).get("rootfs") or {}).get("diff_ids") or []
    if rec.source != "s3" and len(diff_ids) == len(rec.layers):
        for layer, want, ok in zip(rec.layers, diff_ids, layer_ok, strict=True):
            if not ok:
                continue
            got = layer_diff_id(pc.content.path(layer["digest"]))
            report.diff_ids_checked += 1
            if got != want:
                report.problem(f"layer {layer['digest']} unpacks to {got}, its config records diff_id {want}")
    for key in rec.chain:
        report.snapshots_checked += 1
        problem = snapshot_problem(pc.snapshotter, key)
        if problem is not None:
            report.problem(problem)
    return report


def _verify_blob(pc: PullContext, digest: str, report: ImageReport) -> bool:
    report.blobs_checked += 1
    try:
        pc.content.verify(digest)  # a corrupt blob is removed here, never used again
    except NotFound:
        report.problem(f"blob {digest} is missing")
        return False
    except ChecksumMismatch as exc:
        report.problem(exc.message)
        return False
    return True


def _config_digest(pc: PullContext, rec: ImageRecord) -> str | None:
    try:
        manifest = json.loads(pc.content.read_bytes(rec.digest, limit=4 << 20))
    except (CapsaError, ValueError):
        return None  # the manifest itself is reported by its own check
    digest = (manifest.get("config") or {}).get("digest") if isinstance(manifest, dict) else None
    return str(digest) if digest else None
