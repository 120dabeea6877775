"""The one interface every image source implements, and what it returns.

A source turns a :class:`~capsa.images.reference.Reference` into bytes in the
content store, in two verbs (containerd's "resolver + fetcher", in one object):

``resolve(ref, platform) -> ResolvedImage``
    Network- or disk-cheap: read the manifest (selecting ``platform`` from an
    index), read and verify the config, and describe every layer. Nothing is
    written to the content store; the raw manifest and config bytes are returned
    so the caller can store them (:meth:`ContentStore.put_bytes`).

``fetch_blob(desc, writer, *, offset, progress, cancel, timeout_s, clocks) -> None``
    Stream one layer into a content :class:`~capsa.images.content.Writer`,
    starting at ``offset`` (default: the writer's current offset, so a reopened
    ingest resumes: HTTP ``Range`` for registries and S3, ``seek`` for local
    files). It does **not** commit: the caller commits with the expected digest
    and size, which is where a corrupt download is caught and discarded. A short
    read or a dropped connection raises Unavailable (retryable); the ingest keeps
    what arrived.

Errors are the shared vocabulary (``capsa.errors``): NotFound, Unauthorized,
Unavailable (retry with backoff), ChecksumMismatch, Unsupported, InvalidArgument,
LimitExceeded, Timeout, Canceled.

Layers of a source without manifests (S3 tarballs, docker-archive) may have no
digest until hashed: ``digest`` is ``None`` and ``dedupe_hint`` (e.g. the S3 ETag
and size) lets the caller skip a download whose result it already stored.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from capsa.errors import ChecksumMismatch, InvalidArgument
from capsa.images.content import DownloadClocks, ProgressFn, Writer
from capsa.images.oci import Compression, Digest, ImageConfig, Platform
from capsa.images.reference import Reference

__all__ = ["BlobDescriptor", "ResolvedImage", "Source", "bounded", "skip_bytes", "start_offset"]


@dataclass(frozen=True)
class BlobDescriptor:
    """One layer (or other blob) as the source describes it."""

    media_type: str
    size: int
    digest: Digest | None  # None until hashed (S3 objects, compressed docker-archive layers)
    locator: str  # source-specific: registry blob path, s3://bucket/key, file path + offset
    compression: Compression = Compression.NONE
    dedupe_hint: str | None = None  # pre-hash identity (S3: endpoint, bucket, ETag, size)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def ingest_ref(self) -> str:
        """A stable ingest name for this blob, so a restarted download resumes it."""
        if self.digest is not None:
            return f"blob:{self.digest}"
        return f"source:{self.locator}#{self.dedupe_hint or self.size}"


@dataclass(frozen=True)
class ResolvedImage:
    """Everything needed to download and run one image for one platform."""

    reference: Reference
    platform: Platform  # the platform of the chosen image (from its config)
    config: ImageConfig  # Entrypoint, Cmd, Env, WorkingDir, User under config.config
    config_bytes: bytes  # exactly as the source served it (digest-stable)
    config_digest: Digest | None  # None when synthesised (S3)
    layers: tuple[BlobDescriptor, ...]  # bottom layer first
    manifest_digest: Digest | None = None  # None when the source has no manifest (S3)
    manifest_media_type: str | None = None
    manifest_bytes: bytes | None = None
    index_digest: Digest | None = None  # the index the manifest was chosen from, if any
    source_id: str = ""  # what the reference pointed at when resolved (digest, or object versions)


@runtime_checkable
class Source(Protocol):
    """See the module docstring for the contract of each verb."""

    def resolve(self, ref: Reference, platform: Platform | None = None) -> ResolvedImage: ...

    def fetch_blob(
        self,
        desc: BlobDescriptor,
        writer: Writer,
        *,
        offset: int | None = None,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        timeout_s: float | None = None,
        clocks: DownloadClocks | None = None,
    ) -> None: ...


def start_offset(writer: Writer, offset: int | None, desc: BlobDescriptor) -> int:
    """Reconcile a requested ``offset`` with the writer; returns where to start reading.

    Resuming at less than the writer holds rewinds the writer; asking for more than
    it holds would leave a hole and is refused.
    """
    if offset is None:
        offset = writer.offset
    if offset < 0 or offset > writer.offset:
        raise InvalidArgument(f"cannot fetch {desc.locator} from offset {offset}: the ingest holds {writer.offset} bytes")
    if offset < writer.offset:
        writer.truncate(offset)
    if offset > desc.size:
        writer.truncate(0)  # longer than the blob: not this blob's bytes
        return 0
    return offset


def skip_bytes(chunks: Iterable[bytes], count: int) -> Iterator[bytes]:
    """Drop the first ``count`` bytes of a chunk stream (a server that ignored Range)."""
    for chunk in chunks:
        if count >= len(chunk):
            count -= len(chunk)
            continue
        if count:
            chunk = chunk[count:]
            count = 0
        yield chunk



def bounded(chunks: Iterable[bytes], desc: BlobDescriptor, start: int) -> Iterator[bytes]:
    """Pass chunks through, refusing a byte past ``desc.size`` before it is written.

    Without this a hostile server could stream without end into an ingest whose
    writer was opened without an expected size.
    """
    remaining = desc.size - start
    for chunk in chunks:
        remaining -= len(chunk)
        if remaining < 0:
            raise ChecksumMismatch(
                f"{desc.digest or desc.locator}: the source sent more than the expected {desc.size} bytes"
            )
        yield chunk
