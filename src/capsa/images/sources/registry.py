"""OCI Distribution (Docker Registry HTTP API v2) source.

:class:`RegistrySource` implements :class:`~capsa.images.sources.base.Source` on
top of :class:`~capsa.images.sources.registry_client.RegistryClient` (transport,
auth, pushes) and :mod:`~capsa.images.sources.registry_auth` (credentials,
plain-HTTP policy):

* ``resolve`` reads the manifest with every format capsa understands in
  ``Accept`` (OCI index and manifest, Docker manifest list and schema 2),
  narrows an index to the platform (linux/amd64 unless told otherwise), verifies
  each manifest's digest and the config's digest and size, and describes the
  layers (gzip, zstd or uncompressed tar).
* ``fetch_blob`` streams a layer into a content writer, resuming with
  ``Range: bytes=<offset>-`` (a server that ignores Range is handled by
  discarding the bytes already held); a short body is Unavailable (retryable)
  and leaves the ingest for the next attempt.
"""

from __future__ import annotations

import threading

from urllib3.exceptions import HTTPError as _Urllib3Error

from capsa.errors import ChecksumMismatch, InvalidArgument, Unavailable, Unsupported
from capsa.images.content import DownloadClocks, ProgressFn, Writer, copy_to_store
from capsa.images.oci import (
    CONFIG_MEDIA_TYPES,
    MAX_CONFIG_BYTES,
    Index,
    Manifest,
    Platform,
    layer_compression,
    parse_config,
    parse_document,
    select_manifest,
)
from capsa.images.reference import Reference, RefKind
from capsa.images.sources.base import BlobDescriptor, ResolvedImage, bounded, skip_bytes, start_offset
from capsa.images.sources.registry_auth import Credentials, RegistryConfig, is_loopback_host, load_auth_file
from capsa.images.sources.registry_client import RegistryClient, discard_response, make_pool

__all__ = [
    "Credentials",
    "RegistryClient",
    "RegistryConfig",
    "RegistrySource",
    "is_loopback_host",
    "load_auth_file",
]

_CHUNK = 1024 * 1024


class RegistrySource:
    """The :class:`~capsa.images.sources.base.Source` for registry references."""

    def __init__(self, config: RegistryConfig | None = None) -> None:
        self.config = config or RegistryConfig()
        self._pool = make_pool(self.config)
        self._clients: dict[str, RegistryClient] = {}
        self._lock = threading.Lock()

    def client(self, host: str) -> RegistryClient:
        with self._lock:
            if host not in self._clients:
                self._clients[host] = RegistryClient(host, self.config, pool=self._pool)
            return self._clients[host]

    def resolve(self, ref: Reference, platform: Platform | None = None) -> ResolvedImage:
        if ref.kind is not RefKind.REGISTRY or ref.api_host is None or ref.repository is None:
            raise InvalidArgument(f"{ref} is not a registry reference")
        platform = platform or Platform.default()
        client = self.client(ref.api_host)
        repo = ref.repository
        target = ref.manifest_reference
        assert target is not None
        body, content_type, digest = client.get_manifest(repo, target)
        doc = parse_document(body, content_type, what=f"manifest of {ref}")
        index_digest = None
        if isinstance(doc, Index):
            index_digest = digest
            chosen = select_manifest(doc, platform)
            body, content_type, digest = client.get_manifest(repo, chosen.digest)
            if len(body) != chosen.size:
                raise ChecksumMismatch(f"manifest {chosen.digest} of {ref}: index says {chosen.size} bytes, got {len(body)}")
            doc = parse_document(body, chosen.media_type, what=f"manifest {chosen.digest} of {ref}")
            if isinstance(doc, Index):
                raise Unsupported(f"{ref}: the index entry for {platform} is itself an index")
        assert isinstance(doc, Manifest)
        if doc.config.media_type not in CONFIG_MEDIA_TYPES:
            raise Unsupported(
                f"{ref} is not a container image (config media type {doc.config.media_type!r}); "
                "it may be an OCI artifact"
            )
        config_bytes = client.get_blob_bytes(repo, doc.config.digest, size=doc.config.size, limit=MAX_CONFIG_BYTES)
        config = parse_config(config_bytes, what=f"image config {doc.config.digest} of {ref}")
        layers = tuple(
            BlobDescriptor(
                media_type=layer.media_type, size=layer.size, digest=layer.digest,
                locator=f"{ref.api_host}/{repo}@{layer.digest}",
                compression=layer_compression(layer.media_type),
                annotations=dict(layer.annotations or {}),
            )
            for layer in doc.layers
        )
        return ResolvedImage(
            reference=ref, platform=config.platform, config=config, config_bytes=config_bytes,
            config_digest=doc.config.digest, layers=layers, manifest_digest=digest,
            manifest_media_type=doc.media_type or content_type, manifest_bytes=body, index_digest=index_digest,
            source_id=str(index_digest or digest),
        )

    def fetch_blob(
        self, desc: BlobDescriptor, writer: Writer, *, offset: int | None = None, progress: ProgressFn | None = None,
        cancel: threading.Event | None = None, timeout_s: float | None = None,
        clocks: DownloadClocks | None = None,
    ) -> None:
        host, _, rest = desc.locator.partition("/")
        repo, _, digest_text = rest.rpartition("@")
        if not host or not repo or desc.digest is None or digest_text != desc.digest:
            raise InvalidArgument(f"{desc.locator!r} is not a registry blob locator")
        start = start_offset(writer, offset, desc)
        if start >= desc.size:
            return
        client = self.client(host)
        resp, body_start = client.open_blob(repo, desc.digest, start)
        if body_start > start:
            discard_response(resp)
            raise Unavailable(f"blob {desc.digest}: registry resumed at byte {body_start}, asked for {start}")
        try:
            chunks = skip_bytes(resp.stream(_CHUNK, decode_content=False), start - body_start)
            copy_to_store(bounded(chunks, desc, start), writer, progress, cancel, timeout_s, total=desc.size,
                          clocks=clocks)
        except (_Urllib3Error, OSError) as exc:
            raise Unavailable(f"blob {desc.digest} from {host}: connection failed at byte {writer.offset}: {exc}") from None
        finally:
            discard_response(resp)
        if writer.offset < desc.size:
            raise Unavailable(f"blob {desc.digest} from {host}: connection closed at byte {writer.offset} of {desc.size}")
