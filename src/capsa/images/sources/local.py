"""Local sources: OCI image layouts and ``docker save`` archives.

``oci:PATH[:TAG]``
    An OCI image layout directory (``oci-layout``, ``index.json``,
    ``blobs/sha256/<hex>``). ``TAG`` matches the
    ``org.opencontainers.image.ref.name`` annotation of an ``index.json`` entry;
    without it the layout must hold exactly one entry. An entry that is itself an
    index is narrowed to the requested platform. Manifests and configs are
    verified against their digests when read; layers when committed.

``docker-archive:PATH[:NAME:TAG]``
    The uncompressed tar ``docker save`` writes: ``manifest.json`` (a list of
    ``{Config, RepoTags, Layers}``), the config file and the layer tars. Nothing
    is extracted: members are located once with ``tarfile`` and then read
    straight from the archive at their data offset (``pread``), which is also how
    a download resumes. Layer tars inside the archive may be uncompressed (the
    classic format; their digest is the config's ``diff_id``), gzip or zstd
    (newer engines; the digest is known only from an OCI-style member name
    ``blobs/sha256/<hex>``, otherwise after hashing).

Blob files inside a layout are opened with ``O_NOFOLLOW`` so a planted symlink
cannot make capsa read an unrelated host file into an image.
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsa.errors import ChecksumMismatch, InvalidArgument, LimitExceeded, NotFound, Unsupported
from capsa.images.content import DownloadClocks, ProgressFn, Writer, copy_to_store
from capsa.images.oci import (
    ANNOTATION_REF_NAME,
    CONFIG_MEDIA_TYPES,
    DOCKER_LAYER_TAR,
    INDEX_MEDIA_TYPES,
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    Compression,
    Descriptor,
    Digest,
    Index,
    Manifest,
    Platform,
    layer_compression,
    parse_config,
    parse_document,
    select_manifest,
    sha256_digest,
)
from capsa.images.reference import Reference, RefKind, parse_reference
from capsa.images.sources.base import BlobDescriptor, ResolvedImage, bounded, start_offset

__all__ = ["LocalSource"]

_CHUNK = 1024 * 1024
_MAX_ARCHIVE_MEMBERS = 100_000  # ADR-005's file-count bound; a docker save has a few per layer
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_OTHER_MAGIC = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}


@dataclass(frozen=True)
class _Member:
    offset: int
    size: int


class LocalSource:
    """The :class:`~capsa.images.sources.base.Source` for ``oci:`` and ``docker-archive:``."""

    def resolve(self, ref: Reference, platform: Platform | None = None) -> ResolvedImage:
        if ref.path is None or ref.kind not in (RefKind.OCI_LAYOUT, RefKind.DOCKER_ARCHIVE):
            raise InvalidArgument(f"{ref} is not a local (oci: or docker-archive:) reference")
        platform = platform or Platform.default()
        if ref.kind is RefKind.OCI_LAYOUT:
            return _resolve_layout(ref, ref.path, platform)
        return _resolve_archive(ref, ref.path)

    def fetch_blob(
        self, desc: BlobDescriptor, writer: Writer, *, offset: int | None = None, progress: ProgressFn | None = None,
        cancel: threading.Event | None = None, timeout_s: float | None = None,
        clocks: DownloadClocks | None = None,
    ) -> None:
        path, base, nofollow = _parse_locator(desc.locator)
        start = start_offset(writer, offset, desc)
        if start >= desc.size:
            return
        flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise NotFound(f"{path} no longer exists") from None
        except OSError as exc:
            raise InvalidArgument(f"cannot open {path}: {exc.strerror}") from None
        try:
            if os.fstat(fd).st_size < base + desc.size:
                raise ChecksumMismatch(f"{path} is shorter than the {desc.size}-byte blob it should hold")
            chunks = _pread_chunks(fd, base + start, base + desc.size)
            copy_to_store(bounded(chunks, desc, start), writer, progress, cancel, timeout_s, total=desc.size,
                          clocks=clocks)
        finally:
            os.close(fd)


# -- OCI image layout ---------------------------------------------------------------------------


def _resolve_layout(ref: Reference, root: Path, platform: Platform) -> ResolvedImage:
    if not root.is_dir():
        raise NotFound(f"{ref}: {root} is not a directory")
    try:
        marker = json.loads(_read_file(root / "oci-layout", 4096, nofollow=True))
        version = marker.get("imageLayoutVersion")
    except (ValueError, AttributeError):
        version = None
    except NotFound:
        raise NotFound(f"{ref}: {root} is not an OCI image layout (no oci-layout file)") from None
    if not isinstance(version, str) or not version.startswith("1."):
        raise InvalidArgument(f"{ref}: {root}/oci-layout does not declare a supported imageLayoutVersion (1.x)")
    index = parse_document(_read_file(root / "index.json", MAX_MANIFEST_BYTES, nofollow=True), what=f"{root}/index.json")
    if not isinstance(index, Index):
        raise InvalidArgument(f"{ref}: {root}/index.json is not an image index")
    entry = _select_tagged(ref, index)
    index_digest = None
    if entry.media_type in INDEX_MEDIA_TYPES:
        index_digest = entry.digest
        nested = parse_document(_read_blob(root, entry, MAX_MANIFEST_BYTES), entry.media_type, what=f"index {entry.digest}")
        if not isinstance(nested, Index):
            raise InvalidArgument(f"{ref}: blob {entry.digest} is not an index")
        entry = select_manifest(nested, platform)
    manifest_bytes = _read_blob(root, entry, MAX_MANIFEST_BYTES)
    manifest = parse_document(manifest_bytes, entry.media_type, what=f"manifest {entry.digest}")
    if not isinstance(manifest, Manifest):
        raise InvalidArgument(f"{ref}: the entry for {platform} is an index inside an index")
    if manifest.config.media_type not in CONFIG_MEDIA_TYPES:
        raise Unsupported(f"{ref} is not a container image (config media type {manifest.config.media_type!r})")
    config_bytes = _read_blob(root, manifest.config, MAX_CONFIG_BYTES)
    config = parse_config(config_bytes, what=f"image config {manifest.config.digest}")
    layers = tuple(
        BlobDescriptor(
            media_type=layer.media_type, size=layer.size, digest=layer.digest,
            locator=_locator("oci-blob", _blob_path(root, layer.digest), 0),
            compression=layer_compression(layer.media_type), annotations=dict(layer.annotations or {}),
        )
        for layer in manifest.layers
    )
    return ResolvedImage(
        reference=ref, platform=config.platform, config=config, config_bytes=config_bytes,
        config_digest=manifest.config.digest, layers=layers, manifest_digest=entry.digest,
        manifest_media_type=manifest.media_type or entry.media_type, manifest_bytes=manifest_bytes,
        index_digest=index_digest, source_id=str(index_digest or entry.digest),
    )


def _select_tagged(ref: Reference, index: Index) -> Descriptor:
    names = [(d.annotations or {}).get(ANNOTATION_REF_NAME) for d in index.manifests]
    if ref.tag is None:
        if len(index.manifests) == 1:
            return index.manifests[0]
        tags = ", ".join(sorted(n for n in names if n)) or "none"
        raise InvalidArgument(f"{ref}: the layout holds {len(index.manifests)} images; name one with :TAG (tags: {tags})")
    matches = [d for d, n in zip(index.manifests, names, strict=True) if n == ref.tag]
    if not matches:
        tags = ", ".join(sorted(n for n in names if n)) or "none"
        raise NotFound(f"{ref}: no image tagged {ref.tag!r} in the layout (tags: {tags})")
    return matches[0]


def _blob_path(root: Path, digest: Digest) -> Path:
    return root / "blobs" / digest.algorithm / digest.hex


def _read_blob(root: Path, desc: Descriptor, limit: int) -> bytes:
    if desc.size > limit:
        raise LimitExceeded(f"blob {desc.digest} is {desc.size} bytes, over the {limit}-byte limit for such documents")
    data = _read_file(_blob_path(root, desc.digest), limit, nofollow=True)
    actual = sha256_digest(data)
    if actual != desc.digest or len(data) != desc.size:
        raise ChecksumMismatch(f"layout blob {desc.digest}: expected {desc.size} bytes, got {len(data)} hashing to {actual}")
    return data


def _read_file(path: Path, limit: int, *, nofollow: bool) -> bytes:
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise NotFound(f"{path} does not exist") from None
    except OSError as exc:
        raise InvalidArgument(f"cannot open {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise LimitExceeded(f"{path} is over the {limit}-byte limit for such documents")
    return data


# -- docker save archives ---------------------------------------------------------------------------


def _resolve_archive(ref: Reference, path: Path) -> ResolvedImage:
    members = _index_archive(ref, path)
    try:
        manifest_list = json.loads(_read_member(path, members, "manifest.json", MAX_MANIFEST_BYTES, ref))
    except ValueError:
        raise InvalidArgument(f"{ref}: manifest.json in {path} is not valid JSON") from None
    if not isinstance(manifest_list, list) or not manifest_list:
        raise InvalidArgument(f"{ref}: manifest.json is not a non-empty list (is this `docker save` output?)")
    entry = _select_archive_entry(ref, manifest_list)
    config_name = entry.get("Config")
    layer_names = entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise InvalidArgument(f"{ref}: manifest.json entry lacks Config or Layers")
    config_bytes = _read_member(path, members, config_name, MAX_CONFIG_BYTES, ref)
    config = parse_config(config_bytes, what=f"image config {config_name} in {path}")
    diff_ids = config.rootfs.diff_ids if len(config.rootfs.diff_ids) == len(layer_names) else None
    layers: list[BlobDescriptor] = []
    with open(path, "rb") as archive:
        for i, name in enumerate(layer_names):
            if not isinstance(name, str):
                raise InvalidArgument(f"{ref}: layer {i} in manifest.json is not a member name")
            member = _member(members, name, ref)
            head = os.pread(archive.fileno(), 4, member.offset)
            if head.startswith(_GZIP_MAGIC):
                media_type = OCI_LAYER_GZIP
            elif head.startswith(_ZSTD_MAGIC):
                media_type = OCI_LAYER_ZSTD
            else:
                media_type = DOCKER_LAYER_TAR
            compression = layer_compression(media_type)
            digest = _digest_from_name(name)
            if digest is None and compression is Compression.NONE and diff_ids is not None:
                digest = diff_ids[i]
            layers.append(BlobDescriptor(
                media_type=media_type, size=member.size, digest=digest,
                locator=_locator("tar-member", path.absolute(), member.offset), compression=compression,
                annotations={"docker-archive.member": name},
            ))
    return ResolvedImage(
        reference=ref, platform=config.platform, config=config, config_bytes=config_bytes,
        config_digest=sha256_digest(config_bytes), layers=tuple(layers), source_id=str(sha256_digest(config_bytes)),
    )


def _index_archive(ref: Reference, path: Path) -> dict[str, tarfile.TarInfo]:
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except FileNotFoundError:
        raise NotFound(f"{ref}: {path} does not exist") from None
    except IsADirectoryError:
        raise InvalidArgument(f"{ref}: {path} is a directory; docker-archive: needs the tar file `docker save` wrote") from None
    if magic.startswith(_GZIP_MAGIC) or magic.startswith(_ZSTD_MAGIC) or any(magic.startswith(m) for m in _OTHER_MAGIC):
        raise InvalidArgument(f"{ref}: {path} is compressed; decompress it first (docker-archive: reads the plain tar)")
    members: dict[str, tarfile.TarInfo] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if len(members) >= _MAX_ARCHIVE_MEMBERS:
                    raise LimitExceeded(f"{ref}: {path} has more than {_MAX_ARCHIVE_MEMBERS} members")
                members[_norm(info.name)] = info
    except tarfile.TarError as exc:
        raise InvalidArgument(f"{ref}: {path} is not a readable tar archive: {exc}") from None
    return members


def _select_archive_entry(ref: Reference, entries: list[Any]) -> dict[str, Any]:
    if ref.tag is None:
        if len(entries) != 1:
            tags = ", ".join(t for e in entries if isinstance(e, dict) for t in (e.get("RepoTags") or [])) or "none"
            raise InvalidArgument(f"{ref}: the archive holds {len(entries)} images; name one as :NAME:TAG (tags: {tags})")
        entry = entries[0]
    else:
        entry = next((e for e in entries if isinstance(e, dict) and ref.tag in _normalized_tags(e)), None)
        if entry is None:
            tags = ", ".join(t for e in entries if isinstance(e, dict) for t in (e.get("RepoTags") or [])) or "none"
            raise NotFound(f"{ref}: no image tagged {ref.tag!r} in the archive (tags: {tags})")
    if not isinstance(entry, dict):
        raise InvalidArgument(f"{ref}: manifest.json entry is not an object")
    return entry


def _normalized_tags(entry: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for tag in entry.get("RepoTags") or []:
        try:
            parsed = parse_reference(str(tag))
        except InvalidArgument:
            continue
        out.add(f"{parsed.registry}/{parsed.repository}:{parsed.tag}")
    return out


def _member(members: dict[str, tarfile.TarInfo], name: str, ref: Reference) -> _Member:
    """The data extent of a regular member, following in-archive symlinks (docker dedupes layers so)."""
    key = _norm(name)
    for _ in range(16):
        info = members.get(key)
        if info is None:
            raise InvalidArgument(f"{ref}: archive has no member {name!r}")
        if info.issym():
            key = _norm(posixpath.join(posixpath.dirname(key), info.linkname))
            continue
        if info.islnk():
            key = _norm(info.linkname)
            continue
        if not info.isreg() or info.sparse is not None:
            raise InvalidArgument(f"{ref}: archive member {name!r} is not a plain regular file")
        return _Member(info.offset_data, info.size)
    raise InvalidArgument(f"{ref}: archive member {name!r} is a symlink loop")


def _read_member(path: Path, members: dict[str, tarfile.TarInfo], name: str, limit: int, ref: Reference) -> bytes:
    member = _member(members, name, ref)
    if member.size > limit:
        raise LimitExceeded(f"{ref}: {name} is {member.size} bytes, over the {limit}-byte limit for such documents")
    with open(path, "rb") as f:
        data = os.pread(f.fileno(), member.size, member.offset)
    if len(data) != member.size:
        raise InvalidArgument(f"{ref}: {path} is truncated inside {name}")
    return data


def _norm(name: str) -> str:
    return posixpath.normpath(name.lstrip("/")).removeprefix("./")


def _digest_from_name(name: str) -> Digest | None:
    parts = _norm(name).split("/")
    if len(parts) == 3 and parts[0] == "blobs" and parts[1] == "sha256":
        try:
            return Digest.from_hex(parts[2])
        except InvalidArgument:
            return None
    return None


# -- locators and reading ------------------------------------------------------------------------------


def _locator(kind: str, path: Path, offset: int) -> str:
    return f"{kind}:{offset}:{path}"


def _parse_locator(locator: str) -> tuple[Path, int, bool]:
    kind, _, rest = locator.partition(":")
    offset, _, path = rest.partition(":")
    if kind not in ("oci-blob", "tar-member") or not offset.isdigit() or not path:
        raise InvalidArgument(f"{locator!r} is not a local blob locator")
    return Path(path), int(offset), kind == "oci-blob"


def _pread_chunks(fd: int, start: int, end: int) -> Iterator[bytes]:
    pos = start
    while pos < end:
        chunk = os.pread(fd, min(_CHUNK, end - pos), pos)
        if not chunk:
            return  # shorter than promised: the caller sees the short offset
        pos += len(chunk)
        yield chunk
