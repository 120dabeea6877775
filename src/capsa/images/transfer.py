"""Images leaving and joining the node by name: tag, push to an OCI registry, and the blobs an export needs.

* :func:`tag` gives a stored image another registry-style name (the same manifest, layers and snapshots).
* :func:`image_blobs` is what an image is made of as a registry or an OCI layout sees it: the manifest
  bytes, the config and the layers, all read from the content store. An image pulled from a registry or
  an OCI layout keeps its manifest (and digest) byte for byte; one without a stored manifest
  (``docker-archive:``, S3 prefixes) gets an OCI manifest and config written now, so its digest is new.
  With ``oci=True`` a Docker v2 manifest is rewritten to the OCI media types too (same blobs, new
  manifest digest), which is what an OCI image layout must hold.
* :func:`push` uploads it: a blob the registry has is skipped (HEAD), a blob that another repository of
  the same registry holds (one capsa pulled it from) is mounted across repositories where the registry
  allows (``POST ...?mount=&from=``; a registry that does not answers 202 and the blob is uploaded),
  the rest is uploaded, and the manifest is put last under the destination's tag.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from capsa.errors import FailedPrecondition, InvalidArgument, NotFound
from capsa.images.content import ContentStore
from capsa.images.oci import (
    DOCKER_LAYER_FOREIGN_GZIP,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_TAR,
    DOCKER_MANIFEST,
    MAX_MANIFEST_BYTES,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    sha256_digest,
)
from capsa.images.reference import Reference, RefKind, parse_reference
from capsa.images.sources.registry_auth import RegistryConfig
from capsa.images.sources.registry_client import RegistryClient
from capsa.images.store import ImageRecord, ImageStore

__all__ = ["BlobRef", "BlobState", "ImageBlobs", "PushResult", "image_blobs", "push", "tag"]

_OCI_LAYER_TYPES = {DOCKER_LAYER_GZIP: OCI_LAYER_GZIP, DOCKER_LAYER_FOREIGN_GZIP: OCI_LAYER_GZIP,
                    DOCKER_LAYER_TAR: OCI_LAYER_TAR}


@dataclass(frozen=True)
class BlobRef:
    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class ImageBlobs:
    """An image as a registry sees it; every blob named here is in the content store."""

    manifest: bytes
    manifest_media_type: str
    config: BlobRef
    layers: tuple[BlobRef, ...]

    @property
    def manifest_digest(self) -> str:
        return str(sha256_digest(self.manifest))

    @property
    def blobs(self) -> list[BlobRef]:
        """Config and layers, each digest once (an image may repeat a layer)."""
        seen: dict[str, BlobRef] = {}
        for blob in (self.config, *self.layers):
            seen.setdefault(blob.digest, blob)
        return list(seen.values())


@dataclass
class BlobState:
    digest: str
    size: int
    media_type: str
    done: int = 0
    state: str = "waiting"   # waiting | uploading | pushed | exists | mounted


@dataclass(frozen=True)
class PushResult:
    destination: str
    digest: str
    blobs: list[BlobState]


# -- tag ----------------------------------------------------------------------------------------------------
def tag(images: ImageStore, source: ImageRecord, target: str) -> ImageRecord:
    """Name ``source`` also ``target`` (a registry-style reference, no digest); moves the name if taken."""
    ref = parse_reference(target)
    if ref.kind is not RefKind.REGISTRY or ref.digest:
        raise InvalidArgument(f"tag {target!r}: a tag is a registry-style name[:tag] without @digest, "
                              "e.g. localhost:5000/team/app:1")
    named = dataclasses.replace(source, ref=ref.canonical, created_ns=time.time_ns(), users=[])
    images.put(named)
    return images.get(ref.canonical)


# -- what an image is made of --------------------------------------------------------------------------
def image_blobs(content: ContentStore, rec: ImageRecord, *, oci: bool = False) -> ImageBlobs:
    """The manifest, config and layers of ``rec`` (see the module docstring for when a manifest is new)."""
    doc: dict[str, object] | None = None
    media_type = ""
    if content.exists(rec.digest):
        raw = content.read_bytes(rec.digest, limit=MAX_MANIFEST_BYTES)
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("layers"), list) and isinstance(parsed.get("config"), dict):
            doc, media_type = parsed, str(parsed.get("mediaType") or content.info(rec.digest).media_type or OCI_MANIFEST)
    if doc is None:
        blobs = _synthesized(content, rec)
    elif oci and media_type == DOCKER_MANIFEST:
        blobs = _as_oci(doc)
    else:
        blobs = ImageBlobs(manifest=raw, manifest_media_type=media_type, config=_blob_ref(doc["config"]),
                           layers=tuple(_blob_ref(la) for la in doc["layers"]))  # type: ignore[union-attr]
    for blob in blobs.blobs:
        try:
            info = content.info(blob.digest)
        except NotFound:
            raise FailedPrecondition(f"image {rec.ref} is missing blob {blob.digest} in the content store; "
                                     f"`capsa image verify --repair {rec.ref}` fetches it again") from None
        if info.size != blob.size:
            raise FailedPrecondition(f"image {rec.ref}: blob {blob.digest} is {info.size} bytes, its manifest says "
                                     f"{blob.size}; `capsa image verify {rec.ref}` checks the image")
    return blobs


def _blob_ref(desc: object) -> BlobRef:
    if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str) or not isinstance(desc.get("size"), int):
        raise FailedPrecondition(f"stored manifest has a malformed descriptor: {desc!r}")
    return BlobRef(digest=desc["digest"], size=desc["size"], media_type=str(desc.get("mediaType") or ""))


def _as_oci(doc: dict[str, object]) -> ImageBlobs:
    """A Docker v2 manifest with the OCI media types (the blobs are the same bytes)."""
    out = dict(doc)
    out["mediaType"] = OCI_MANIFEST
    config = dict(doc["config"])  # type: ignore[arg-type]
    config["mediaType"] = OCI_CONFIG
    out["config"] = config
    layers = []
    for layer in doc["layers"]:  # type: ignore[attr-defined]
        layer = dict(layer)
        layer["mediaType"] = _OCI_LAYER_TYPES.get(str(layer.get("mediaType")), layer.get("mediaType"))
        layers.append(layer)
    out["layers"] = layers
    manifest = json.dumps(out, separators=(",", ":")).encode()
    return ImageBlobs(manifest=manifest, manifest_media_type=OCI_MANIFEST, config=_blob_ref(config),
                      layers=tuple(_blob_ref(la) for la in layers))


def _synthesized(content: ContentStore, rec: ImageRecord) -> ImageBlobs:
    """An OCI manifest (and a config blob) for an image stored without a manifest."""
    diff_ids = (rec.config.get("rootfs") or {}).get("diff_ids") if isinstance(rec.config, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(rec.layers):
        raise FailedPrecondition(f"image {rec.ref} ({rec.source}) has no layer diff_ids in its config, so it "
                                 "cannot be written as an OCI image; pull it from a registry or OCI layout instead")
    config_bytes = json.dumps(rec.config, separators=(",", ":"), sort_keys=True).encode()
    config_digest = str(sha256_digest(config_bytes))
    if not content.exists(config_digest):
        content.put_bytes(config_bytes, expected=config_digest, media_type=OCI_CONFIG)
    config = BlobRef(digest=config_digest, size=len(config_bytes), media_type=OCI_CONFIG)
    layers = tuple(BlobRef(digest=str(la["digest"]), size=int(la["size"]),
                           media_type=_OCI_LAYER_TYPES.get(la.get("media_type", ""), la.get("media_type") or OCI_LAYER_TAR))
                   for la in rec.layers)
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
           "layers": [{"mediaType": la.media_type, "digest": la.digest, "size": la.size} for la in layers]}
    manifest = json.dumps(doc, separators=(",", ":")).encode()
    return ImageBlobs(manifest=manifest, manifest_media_type=OCI_MANIFEST, config=config, layers=layers)


# -- push -----------------------------------------------------------------------------------------------
def push(content: ContentStore, images: ImageStore, registry: RegistryConfig, rec: ImageRecord, destination: str, *,
         insecure: bool = False, progress: Callable[[list[BlobState]], None] | None = None,
         cancel: threading.Event | None = None) -> PushResult:
    """Upload ``rec`` to ``destination`` (a registry reference with a tag; empty: the image's own name)."""
    dest = parse_reference(destination or rec.ref)
    if dest.kind is not RefKind.REGISTRY:
        raise InvalidArgument(f"push to a registry reference (host[:port]/repository:tag), not {dest}")
    if dest.digest:
        raise InvalidArgument(f"push to a tag, not a digest: {dest}")
    host, repo = dest.api_host, dest.repository
    assert host is not None and repo is not None
    blobs = image_blobs(content, rec)
    config = dataclasses.replace(registry, insecure=registry.insecure | {host}) if insecure else registry
    client = RegistryClient(host, config)
    states = [BlobState(b.digest, b.size, b.media_type) for b in blobs.blobs]
    report = progress or (lambda _: None)
    report(states)
    mounts = _mount_sources(images, host, repo)
    for state in states:
        if cancel is not None and cancel.is_set():
            raise FailedPrecondition(f"push of {rec.ref} to {dest} canceled")
        if client.blob_exists(repo, state.digest):
            state.state, state.done = "exists", state.size
            report(states)
            continue
        source_repo = mounts.get(state.digest)
        if source_repo is not None and client.mount_blob(repo, state.digest, source_repo):
            state.state, state.done = "mounted", state.size
            report(states)
            continue
        state.state = "uploading"
        report(states)
        with content.open(state.digest) as raw:
            sent = client.push_blob(repo, _Counting(raw, state, states, report), state.digest, state.size)
        state.state, state.done = ("pushed" if sent else "exists"), state.size
        report(states)
    digest = client.push_manifest(repo, dest.tag or "latest", blobs.manifest, blobs.manifest_media_type)
    return PushResult(destination=dest.canonical, digest=str(digest), blobs=states)


def _mount_sources(images: ImageStore, host: str, repo: str) -> dict[str, str]:
    """digest -> another repository of ``host`` that a stored image was pulled from and that holds it."""
    found: dict[str, str] = {}
    for other in images.list():
        try:
            ref: Reference = parse_reference(other.ref)
        except InvalidArgument:
            continue
        if ref.kind is not RefKind.REGISTRY or ref.api_host != host or not ref.repository or ref.repository == repo:
            continue
        for layer in other.layers:   # (configs are small: not worth a mount attempt)
            found.setdefault(str(layer["digest"]), ref.repository)
    return found


class _Counting:
    """A readable stream that reports how much of a blob the registry has read so far (4 times a second)."""

    def __init__(self, raw: IO[bytes], state: BlobState, states: list[BlobState],
                 report: Callable[[list[BlobState]], None]) -> None:
        self._raw, self._state, self._states, self._report = raw, state, states, report
        self._last = 0.0

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        """(The client rewinds to resend a body after an auth challenge: the count follows.)"""
        position = self._raw.seek(offset, whence)
        self._state.done = position
        return position

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._state.done += len(data)
        now = time.monotonic()
        if now - self._last >= 0.25:
            self._last = now
            self._report(self._states)
        return data

