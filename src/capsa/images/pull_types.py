"""Requests and responses of the pull machines: one dataclass per message (stored as JSON).

``image.pull``   PullRequest -> PullPlan (resolve) -> PullPlan (fetch) -> PullPlan (unpack) -> image record
``blob.fetch``   FetchRequest -> FetchResult
``layer.unpack`` UnpackRequest -> UnpackResult
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from capsa.images.oci import Compression, Digest
from capsa.images.sources import BlobDescriptor

__all__ = ["FetchRequest", "FetchResult", "LayerDesc", "PullPlan", "PullRequest", "UnpackRequest", "UnpackResult"]


@dataclass
class LayerDesc:
    """A layer as the source described it; ``digest`` is filled in once the blob is stored."""

    media_type: str
    size: int
    digest: str | None
    locator: str
    compression: str = "none"
    dedupe_hint: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, desc: BlobDescriptor) -> LayerDesc:
        return cls(media_type=desc.media_type, size=desc.size, digest=str(desc.digest) if desc.digest else None,
                   locator=desc.locator, compression=Compression(desc.compression).value,
                   dedupe_hint=desc.dedupe_hint, annotations=dict(desc.annotations))

    def descriptor(self) -> BlobDescriptor:
        return BlobDescriptor(media_type=self.media_type, size=self.size,
                              digest=Digest(self.digest) if self.digest else None, locator=self.locator,
                              compression=Compression(self.compression or "none"), dedupe_hint=self.dedupe_hint,
                              annotations=dict(self.annotations))


@dataclass
class PullRequest:
    ref: str
    platform: str = ""
    insecure: bool = False
    expected_digest: str | None = None
    always: bool = False


@dataclass
class PullPlan:
    """What resolve learned, carried (and completed) through fetch and unpack."""

    ref: str
    insecure: bool
    platform: str
    manifest_digest: str | None
    config: dict[str, Any]
    layers: list[LayerDesc]
    source: str
    expected_digest: str | None = None
    always: bool = False
    download_deadline_at: float | None = None
    """Unix time by which every blob of the image must be stored (images.download.image_deadline_s)."""
    fetch_runs: list[str] = field(default_factory=list)
    """The blob.fetch run of each layer, started by ``fetch`` and followed by ``unpack``."""
    chain: list[str] = field(default_factory=list)
    unpacked_size: int = 0

    def diff_ids(self) -> list[str | None]:
        """The uncompressed digests to check while unpacking, when they are authoritative.

        Registry and local images carry them in their config; S3 images have synthesised
        configs, so theirs are not checked.
        """
        ids = ((self.config or {}).get("rootfs") or {}).get("diff_ids") or []
        if self.manifest_digest and len(ids) == len(self.layers):
            return [str(i) for i in ids]
        return [None] * len(self.layers)


@dataclass
class FetchRequest:
    ref: str
    insecure: bool
    layer: LayerDesc
    expected_digest: str | None = None
    deadline_at: float | None = None


@dataclass
class FetchResult:
    digest: str
    size: int


@dataclass
class UnpackRequest:
    key: str
    parent: str | None
    digest: str
    media_type: str
    ref: str = ""
    """The image this layer was first unpacked for (named in refusals)."""
    entries_so_far: int = 0
    bytes_so_far: int = 0
    diff_id: str | None = None
    started_at: float | None = None
    """Unix time the image's extraction clock started (one clock for all its layers)."""
    detached: bool = False
    """Unpack without the parent (``extract-KEY`` is left complete and active for the pull
    to attach to the parent and commit) — snapshotters with ``detached_layers`` only."""


@dataclass
class UnpackResult:
    entries: int
    bytes: int
    root_meta: bool = False
    unpack_s: float = 0.0
    verify_s: float = 0.0
    committed: bool = True
    """False for a detached unpack: ``extract-KEY`` still waits to be attached and committed."""
