"""Where images come from: one small interface (``base.Source``), three backends.

>>> source = open_source(ref, registry=RegistryConfig(), s3=S3Config())
>>> image = source.resolve(ref, Platform.parse("linux/amd64"))
>>> with store.writer(layer.ingest_ref, expected=layer.digest, expected_size=layer.size) as w:
...     source.fetch_blob(layer, w, progress=print, timeout_s=300)
...     w.commit(layer.size, layer.digest, media_type=layer.media_type)
"""

from __future__ import annotations

from capsa.images.reference import Reference, RefKind
from capsa.images.sources.base import BlobDescriptor, ResolvedImage, Source
from capsa.images.sources.local import LocalSource
from capsa.images.sources.registry import (
    Credentials,
    RegistryClient,
    RegistryConfig,
    RegistrySource,
    load_auth_file,
)
from capsa.images.sources.s3 import S3Config, S3Source

__all__ = [
    "BlobDescriptor",
    "Credentials",
    "LocalSource",
    "RegistryClient",
    "RegistryConfig",
    "RegistrySource",
    "ResolvedImage",
    "S3Config",
    "S3Source",
    "Source",
    "load_auth_file",
    "open_source",
]


def open_source(ref: Reference, *, registry: RegistryConfig | None = None, s3: S3Config | None = None) -> Source:
    """The source that serves ``ref``'s kind (a new one; keep it to reuse connections)."""
    if ref.kind is RefKind.REGISTRY:
        return RegistrySource(registry)
    if ref.kind is RefKind.S3:
        return S3Source(s3)
    return LocalSource()
