"""OCI and Docker image formats: digests, media types, typed documents, platforms.

Everything a source needs to understand what a registry, a layout or an archive
hands it lives here, so the sources stay about *transport*:

* :class:`Digest` — a validated ``sha256:<64 hex>`` string (the only algorithm
  capsa stores; others are refused as :class:`~capsa.errors.Unsupported`).
* media-type constants for OCI and Docker schema 2 manifests, indexes, configs
  and layers, and :func:`layer_compression` to tell gzip / zstd / plain tar.
* pydantic models of the documents (:class:`Manifest`, :class:`Index`,
  :class:`ImageConfig`) that keep unknown fields, so a document re-serialises
  without losing what capsa does not read.
* :class:`Platform` parsing (``os/arch[/variant]``) and :func:`select_manifest`,
  which picks one entry of an index the way containerd's default matcher does.

Documents are size-bounded before parsing (image ADR-005): a registry that
answers a manifest request with gigabytes is refused, not buffered.
"""

from __future__ import annotations

import enum
import hashlib
import json
import platform as _host_platform
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, ValidationError
from pydantic_core import core_schema

from capsa.errors import InvalidArgument, LimitExceeded, NotFound, Unsupported

__all__ = [
    "ANNOTATION_REF_NAME",
    "BuiltImage",
    "CONFIG_MEDIA_TYPES",
    "DOCKER_CONFIG",
    "DOCKER_LAYER_FOREIGN_GZIP",
    "DOCKER_LAYER_GZIP",
    "DOCKER_LAYER_TAR",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "DOCKER_MANIFEST_V1_SIGNED",
    "INDEX_MEDIA_TYPES",
    "MANIFEST_ACCEPT",
    "MANIFEST_MEDIA_TYPES",
    "MAX_CONFIG_BYTES",
    "MAX_MANIFEST_BYTES",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_TAR",
    "OCI_LAYER_ZSTD",
    "OCI_MANIFEST",
    "Compression",
    "ContainerConfig",
    "Descriptor",
    "Digest",
    "ImageConfig",
    "Index",
    "Manifest",
    "Platform",
    "RootFS",
    "build_image",
    "layer_compression",
    "load_json_object",
    "parse_config",
    "parse_document",
    "select_manifest",
    "sha256_digest",
]

# -- digests ---------------------------------------------------------------------------

_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")
_SHA256_HEX_RE = re.compile(r"^[a-f0-9]{64}$")


class Digest(str):
    """A content digest, always ``sha256:<64 lowercase hex>``.

    A ``str`` subclass so it drops into JSON, SQL and f-strings unchanged; the
    constructor validates, so holding a ``Digest`` means holding a well-formed one
    (which is what makes ``blobs/sha256/<hex>`` paths safe to build from it).
    """

    __slots__ = ()

    def __new__(cls, value: str) -> Digest:
        if isinstance(value, Digest):
            return value
        if not isinstance(value, str):
            raise InvalidArgument(f"digest must be a string, got {type(value).__name__}")
        match = _DIGEST_RE.match(value)
        if not match:
            raise InvalidArgument(f"malformed digest {value[:100]!r}: expected 'sha256:<64 hex digits>'")
        algorithm, encoded = match.groups()
        if algorithm != "sha256":
            raise Unsupported(f"digest algorithm {algorithm!r} is not supported (only sha256): {value[:100]}")
        if not _SHA256_HEX_RE.match(encoded):
            raise InvalidArgument(f"malformed sha256 digest {value[:100]!r}: expected 64 lowercase hex digits")
        return super().__new__(cls, value)

    @property
    def algorithm(self) -> str:
        return "sha256"

    @property
    def hex(self) -> str:
        return self[7:]

    @classmethod
    def from_hex(cls, hex_digest: str) -> Digest:
        return cls("sha256:" + hex_digest)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            _validate_digest, core_schema.str_schema(), serialization=core_schema.to_string_ser_schema()
        )


def _validate_digest(value: str) -> Digest:
    # pydantic reports ValueErrors with the field's location; our own errors would escape it.
    try:
        return Digest(value)
    except (InvalidArgument, Unsupported) as exc:
        raise ValueError(exc.message) from None


def sha256_digest(data: bytes) -> Digest:
    return Digest.from_hex(hashlib.sha256(data).hexdigest())


# -- media types -------------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
_OCI_NONDIST_PREFIX = "application/vnd.oci.image.layer.nondistributable.v1.tar"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
# docker save / docker-archive layers carry no media type of their own; this is what
# the Docker engine calls an uncompressed layer.
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"

MANIFEST_MEDIA_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
CONFIG_MEDIA_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
# The Accept header for manifest requests: every format capsa can read, preferred first.
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST])

# Registries commonly cap manifests at 4 MiB (distribution spec); configs are larger
# for images with long histories, but not by orders of magnitude.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 16 * 1024 * 1024

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"


class Compression(enum.StrEnum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


_LAYER_COMPRESSION: dict[str, Compression] = {
    OCI_LAYER_TAR: Compression.NONE,
    OCI_LAYER_GZIP: Compression.GZIP,
    OCI_LAYER_ZSTD: Compression.ZSTD,
    _OCI_NONDIST_PREFIX: Compression.NONE,
    _OCI_NONDIST_PREFIX + "+gzip": Compression.GZIP,
    _OCI_NONDIST_PREFIX + "+zstd": Compression.ZSTD,
    DOCKER_LAYER_TAR: Compression.NONE,
    DOCKER_LAYER_GZIP: Compression.GZIP,
    DOCKER_LAYER_FOREIGN_GZIP: Compression.GZIP,
}


def layer_compression(media_type: str) -> Compression:
    """How a layer of ``media_type`` is compressed; Unsupported for anything not a tar layer."""
    try:
        return _LAYER_COMPRESSION[media_type]
    except KeyError:
        raise Unsupported(
            f"layer media type {media_type!r} is not supported "
            "(expected an OCI or Docker tar layer: uncompressed, gzip or zstd)"
        ) from None


# -- documents ---------------------------------------------------------------------------


class _Doc(BaseModel):
    # Unknown fields are kept: a document read and written back must not lose data.
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)


class Platform(_Doc):
    architecture: str
    os: str
    os_version: str | None = Field(default=None, alias="os.version")
    os_features: list[str] | None = Field(default=None, alias="os.features")
    variant: str | None = None

    @classmethod
    def parse(cls, spec: str) -> Platform:
        """Parse ``os/arch[/variant]`` (``linux/amd64``, ``linux/arm64/v8``, ``linux/arm/v7``)."""
        parts = spec.strip().split("/")
        if len(parts) not in (2, 3) or not all(re.fullmatch(r"[a-z0-9_.-]+", p) for p in parts):
            raise InvalidArgument(
                f"bad platform {spec!r}: expected os/arch[/variant] in lowercase, e.g. linux/amd64 or linux/arm64/v8"
            )
        arch, variant = _normalize_arch(parts[1], parts[2] if len(parts) == 3 else None)
        return cls(os=parts[0], architecture=arch, variant=variant)

    @classmethod
    def default(cls) -> Platform:
        """linux/amd64: capsa's documented default, whatever the host (issue 3)."""
        return cls(os="linux", architecture="amd64")

    @classmethod
    def host(cls) -> Platform:
        arch, variant = _normalize_arch(_host_platform.machine().lower(), None)
        return cls(os="linux", architecture=arch, variant=variant)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, other: Platform) -> bool:
        """Does an index entry for ``other`` satisfy a request for ``self``?

        OS and architecture must agree after normalisation; a requested variant must
        agree too, an unrequested one matches any (containerd's default matcher does
        the same, then ranks).
        """
        mine = _normalize_arch(self.architecture, self.variant)
        theirs = _normalize_arch(other.architecture, other.variant)
        if self.os != other.os or mine[0] != theirs[0]:
            return False
        return mine[1] is None or mine[1] == theirs[1]


_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm", "armel": "arm", "i686": "386", "i386": "386"}
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


def _normalize_arch(arch: str, variant: str | None) -> tuple[str, str | None]:
    arch = _ARCH_ALIASES.get(arch, arch)
    if arch == "arm64" and variant == "8":
        variant = "v8"
    if arch == "arm" and variant in ("5", "6", "7", "8"):
        variant = "v" + variant
    return arch, variant


class Descriptor(_Doc):
    media_type: str = Field(alias="mediaType")
    digest: Digest
    size: int = Field(ge=0)
    urls: list[str] | None = None
    annotations: dict[str, str] | None = None
    platform: Platform | None = None
    artifact_type: str | None = Field(default=None, alias="artifactType")


class Manifest(_Doc):
    schema_version: int = Field(alias="schemaVersion")
    media_type: str | None = Field(default=None, alias="mediaType")
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] | None = None
    subject: Descriptor | None = None
    artifact_type: str | None = Field(default=None, alias="artifactType")


class Index(_Doc):
    schema_version: int = Field(alias="schemaVersion")
    media_type: str | None = Field(default=None, alias="mediaType")
    manifests: list[Descriptor]
    annotations: dict[str, str] | None = None


class ContainerConfig(_Doc):
    """The runtime defaults of an image (``config`` in the OCI image config)."""

    user: str | None = Field(default=None, alias="User")
    env: list[str] | None = Field(default=None, alias="Env")
    entrypoint: list[str] | None = Field(default=None, alias="Entrypoint")
    cmd: list[str] | None = Field(default=None, alias="Cmd")
    working_dir: str | None = Field(default=None, alias="WorkingDir")
    labels: dict[str, str] | None = Field(default=None, alias="Labels")
    stop_signal: str | None = Field(default=None, alias="StopSignal")


class RootFS(_Doc):
    type: str = "layers"
    diff_ids: list[Digest] = Field(default_factory=list)


class ImageConfig(_Doc):
    architecture: str = "amd64"
    os: str = "linux"
    variant: str | None = None
    created: str | None = None
    author: str | None = None
    config: ContainerConfig = Field(default_factory=ContainerConfig)
    rootfs: RootFS = Field(default_factory=RootFS)
    history: list[dict[str, Any]] | None = None

    @property
    def platform(self) -> Platform:
        return Platform(os=self.os, architecture=self.architecture, variant=self.variant)

    def to_json(self) -> bytes:
        """Canonical-ish JSON (sorted keys, no spaces): stable bytes, stable digest."""
        return json.dumps(
            self.model_dump(by_alias=True, exclude_none=True, mode="json"), sort_keys=True, separators=(",", ":")
        ).encode()


def load_json_object(data: bytes, what: str, limit: int | None = None) -> dict[str, Any]:
    """``data`` as a JSON object; InvalidArgument names ``what``, LimitExceeded guards ``limit`` bytes."""
    if limit is not None and len(data) > limit:
        raise LimitExceeded(f"{what} is {len(data)} bytes, over the {limit}-byte limit for such documents")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    return doc


def parse_document(data: bytes, content_type: str | None = None, *, what: str = "manifest") -> Manifest | Index:
    """Parse a manifest or an index, using its ``mediaType`` field, else ``content_type``.

    Docker schema 1 is refused (deprecated, unsigned digests); documents whose shape
    contradicts their declared type are refused rather than guessed at.
    """
    doc = load_json_object(data, what, MAX_MANIFEST_BYTES)
    declared = doc.get("mediaType")
    header = (content_type or "").split(";")[0].strip() or None
    media_type = declared if isinstance(declared, str) and declared else header
    if doc.get("schemaVersion") == 1 or media_type == DOCKER_MANIFEST_V1_SIGNED:
        raise Unsupported(f"{what} uses Docker schema 1, which capsa does not support; re-push it as schema 2 or OCI")
    if media_type is None:
        # OCI allows mediaType to be absent; the shape then decides.
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    try:
        if media_type in INDEX_MEDIA_TYPES:
            return Index.model_validate(doc)
        if media_type in MANIFEST_MEDIA_TYPES:
            return Manifest.model_validate(doc)
    except ValidationError as exc:
        raise InvalidArgument(f"{what} ({media_type}) is malformed: {_first_error(exc)}") from None
    raise Unsupported(f"{what} has media type {media_type!r}, which is neither an image manifest nor an index")


def parse_config(data: bytes, *, what: str = "image config") -> ImageConfig:
    doc = load_json_object(data, what, MAX_CONFIG_BYTES)
    try:
        return ImageConfig.model_validate(doc)
    except ValidationError as exc:
        raise InvalidArgument(f"{what} is malformed: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{loc}: {err.get('msg')}" if loc else str(err.get("msg"))


# -- platform selection ----------------------------------------------------------------------


def select_manifest(index: Index, platform: Platform) -> Descriptor:
    """The index entry for ``platform``; NotFound names what the index offers.

    Among several matches, an exact variant match wins, then the architecture's
    default variant (arm64 → v8, arm → v7), then the first entry in index order.
    Attestation manifests (``unknown/unknown``) and non-manifest entries never match.
    """
    candidates: list[Descriptor] = []
    for desc in index.manifests:
        if desc.media_type not in MANIFEST_MEDIA_TYPES or desc.platform is None:
            continue
        if platform.matches(desc.platform):
            candidates.append(desc)
    if not candidates:
        offered = sorted({str(d.platform) for d in index.manifests if d.platform is not None}) or ["none"]
        raise NotFound(f"no image for platform {platform} in the index (it offers: {', '.join(offered)})")
    want_arch, want_variant = _normalize_arch(platform.architecture, platform.variant)

    def rank(desc: Descriptor) -> int:
        assert desc.platform is not None
        _, variant = _normalize_arch(desc.platform.architecture, desc.platform.variant)
        if variant == want_variant:
            return 0
        if variant in (None, _DEFAULT_VARIANT.get(want_arch)):
            return 1
        return 2

    return min(candidates, key=rank)  # min() is stable: first of equal rank wins


# -- building images (S3 imports, capsules as artifacts) ------------------------------------------


@dataclass(frozen=True)
class BuiltImage:
    config: bytes
    config_digest: Digest
    manifest: bytes
    manifest_digest: Digest


def build_image(
    config: ImageConfig, layers: Sequence[tuple[Digest, int, str]], *, diff_ids: Sequence[Digest] | None = None,
    annotations: dict[str, str] | None = None,
) -> BuiltImage:
    """Serialise an OCI config and manifest for ``layers`` (digest, size, media type).

    Used where a source has no manifest of its own (S3 tarballs, docker-archive) and
    for pushing: the result is a real OCI image a registry accepts. ``diff_ids``
    defaults to the layer digests, which is right for uncompressed layers only;
    compressed layers need the digests of their decompressed tars.
    """
    if diff_ids is None:
        if any(layer_compression(mt) is not Compression.NONE for _, _, mt in layers):
            raise InvalidArgument("diff_ids are required when any layer is compressed")
        diff_ids = [d for d, _, _ in layers]
    if len(diff_ids) != len(layers):
        raise InvalidArgument(f"{len(diff_ids)} diff_ids for {len(layers)} layers")
    config = config.model_copy(update={"rootfs": RootFS(type="layers", diff_ids=list(diff_ids))})
    config_bytes = config.to_json()
    config_digest = sha256_digest(config_bytes)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": mt, "digest": d, "size": s} for d, s, mt in layers],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
    return BuiltImage(config_bytes, config_digest, manifest_bytes, sha256_digest(manifest_bytes))
