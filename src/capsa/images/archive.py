"""OCI image-layout archives: ``capsa image save`` writes one, ``capsa image load`` reads one.

The archive is a plain tar of an OCI image layout (image-spec ``image-layout.md``), the format
``skopeo copy ... oci-archive:FILE`` and ``umoci`` read and write:

    oci-layout                 {"imageLayoutVersion": "1.0.0"}
    index.json                 one manifest descriptor per image, annotated with its name
    blobs/sha256/<hex>         manifests, configs, layers - each once

Saving streams the tar straight from the content store (no temporary copy); the names go in the
``io.containerd.image.name`` (full reference) and ``org.opencontainers.image.ref.name`` (tag)
annotations, as containerd and Docker write them.

Loading streams the tar too: each ``blobs/sha256/<hex>`` member goes straight into the content store
through a verifying writer (a wrong digest or size aborts the load, exit 10), so nothing is ever
written under a name the archive chose. Members that are not regular files or directories (links,
devices, fifos), and names that are absolute or climb with ``..``, make the archive unsafe (exit 11):
an image archive has no reason to hold them. Each image in ``index.json`` is then imported through
the ordinary pull of an ``oci:`` layout - a scratch layout whose ``blobs`` is the content store's own
directory - so loading gets the pull's platform choice, limits, hardened unpacking and snapshots, and
copies no blob twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import shutil
import tarfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from capsa.errors import InvalidArgument, LimitExceeded, UnsafeArchive
from capsa.images.content import ContentStore
from capsa.images.oci import ANNOTATION_REF_NAME, MAX_MANIFEST_BYTES, OCI_INDEX
from capsa.images.reference import RefKind, parse_reference
from capsa.images.store import ImageRecord

if TYPE_CHECKING:
    from capsa.images.service import ImageService
from capsa.images.transfer import ImageBlobs, image_blobs
from capsa.images.transfer import tag as tag_image

__all__ = ["ANNOTATION_IMAGE_NAME", "LoadedArchive", "load", "read_archive", "save_archive"]

ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
_CHUNK = 1024 * 1024
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_MAX_MEMBERS = 100_000
_TRAILER_LIMIT = 1024 * 1024   # zero blocks after the end marker (tar pads to 10 KiB records; some writers more)
_BLOB_NAME = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")
_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'


# -- save -----------------------------------------------------------------------------------------------
def save_archive(content: ContentStore, records: list[ImageRecord]) -> tuple[int, Iterator[bytes]]:
    """(total bytes of the blobs, the tar's bytes in chunks) for ``records``; blobs are checked first."""
    images = [(rec, image_blobs(content, rec, oci=True)) for rec in records]
    entries = []
    blobs: dict[str, int] = {}
    for rec, parts in images:
        entries.append({"mediaType": parts.manifest_media_type, "digest": parts.manifest_digest,
                        "size": len(parts.manifest), "annotations": _names(rec.ref)})
        for blob in parts.blobs:
            blobs.setdefault(blob.digest, blob.size)
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, indent=2).encode()
    total = sum(blobs.values()) + sum(len(p.manifest) for _, p in images)
    return total, _tar_stream(content, index, images, blobs)


def _names(ref: str) -> dict[str, str]:
    parsed = parse_reference(ref)
    out = {ANNOTATION_IMAGE_NAME: parsed.canonical}
    if parsed.kind is RefKind.REGISTRY and parsed.tag:
        out[ANNOTATION_REF_NAME] = parsed.tag
    return out


def _tar_stream(content: ContentStore, index: bytes, images: list[tuple[ImageRecord, ImageBlobs]],
                blobs: dict[str, int]) -> Iterator[bytes]:
    written = 0

    def member(name: str, size: int, *, directory: bool = False) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.uname, info.gname = size, 0, "", ""
        info.type, info.mode = (tarfile.DIRTYPE, 0o755) if directory else (tarfile.REGTYPE, 0o644)
        return info.tobuf(tarfile.USTAR_FORMAT)

    def small(name: str, data: bytes) -> bytes:
        return member(name, len(data)) + data + _padding(len(data))

    out = [small("oci-layout", _LAYOUT), small("index.json", index),
           member("blobs/", 0, directory=True), member("blobs/sha256/", 0, directory=True)]
    done: set[str] = set()
    for _, parts in images:
        digest = parts.manifest_digest
        if digest not in done:
            done.add(digest)
            out.append(small(f"blobs/sha256/{digest[7:]}", parts.manifest))
    head = b"".join(out)
    written += len(head)
    yield head
    for digest, size in blobs.items():
        if digest in done:
            continue
        done.add(digest)
        yield member(f"blobs/sha256/{digest[7:]}", size)
        sent = 0
        with content.open(digest) as f:
            while sent < size:
                chunk = f.read(min(_CHUNK, size - sent))
                if not chunk:
                    raise InvalidArgument(f"blob {digest} ended after {sent} of {size} bytes while saving")
                sent += len(chunk)
                yield chunk
        yield _padding(size)
        written += _BLOCK + size + len(_padding(size))
    end = 2 * _BLOCK
    written += end
    yield b"\0" * (end + (-written) % _RECORD)


def _padding(size: int) -> bytes:
    return b"\0" * ((-size) % _BLOCK)


# -- load -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedArchive:
    """What an archive held once its blobs are in the content store."""

    index: dict[str, object]
    blobs: int               # blob members stored (or already present)

    def images(self, tag: str = "") -> list[tuple[dict[str, object], str]]:
        """(manifest descriptor, name) for each image of the index; ``tag`` names a lone unnamed one."""
        entries = self.index.get("manifests")
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
            raise InvalidArgument("the archive's index.json lists no images")
        if tag and len(entries) != 1:
            raise InvalidArgument(f"--tag names one image, but the archive holds {len(entries)}")
        out = []
        for entry in entries:
            name = tag or _entry_name(entry)
            if not name:
                raise InvalidArgument("an image in the archive has no name (no io.containerd.image.name or full "
                                      "org.opencontainers.image.ref.name annotation); give one with --tag NAME")
            ref = parse_reference(name)
            if ref.kind is not RefKind.REGISTRY or ref.digest:
                raise InvalidArgument(f"the archive names an image {name!r}: not a registry-style name[:tag]")
            out.append((entry, ref.canonical))
        return out


def _entry_name(entry: dict[str, object]) -> str:
    notes = entry.get("annotations")
    if not isinstance(notes, dict):
        return ""
    full = notes.get(ANNOTATION_IMAGE_NAME)
    if isinstance(full, str) and full:
        return full
    short = notes.get(ANNOTATION_REF_NAME)
    # A bare tag ("latest", "1") names no repository; "team/app:1" or "host/app:1" does (skopeo writes these).
    return short if isinstance(short, str) and "/" in short else ""


class _Chunks:
    """A read()-able stream over an iterable of byte chunks (the gRPC upload)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._buf = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buf) < size:
            chunk = next(self._it, None)
            if chunk is None:
                break
            self._buf += chunk
        if size < 0:
            size = len(self._buf)
        out, self._buf = self._buf[:size], self._buf[size:]
        return out

    def drain(self, limit: int) -> None:
        """Read to the end of the stream (so the sender's end marker is seen); tar's zero padding is
        expected there, more than ``limit`` bytes of anything is not."""
        left = len(self._buf)
        for chunk in self._it:
            left += len(chunk)
            if left > limit:
                raise InvalidArgument("the archive goes on after its end-of-archive marker")
        self._buf = b""


def read_archive(content: ContentStore, chunks: Iterable[bytes]) -> LoadedArchive:
    """Store every blob of the archive (verified) and return its index; see the module docstring."""
    stream = _Chunks(chunks)
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*")  # type: ignore[call-overload]  # noqa: SIM115 (closed below)
    except tarfile.TarError as exc:
        raise InvalidArgument(f"not a tar archive: {exc}") from None
    layout: bytes | None = None
    index: bytes | None = None
    stored = 0
    count = 0
    try:
        for info in tar:
            count += 1
            if count > _MAX_MEMBERS:
                raise LimitExceeded(f"the archive has more than {_MAX_MEMBERS} members")
            name = _safe_name(info)
            if info.isdir():
                continue
            if not info.isreg():
                kind = "symlink" if info.issym() else "hard link" if info.islnk() else "device, fifo or special file"
                raise UnsafeArchive(f"archive member {info.name!r} is a {kind}: an image archive holds only "
                                    "regular files and directories")
            blob = _BLOB_NAME.match(name)
            if name == "oci-layout":
                layout = _read_small(tar, info, 4096)
            elif name == "index.json":
                index = _read_small(tar, info, MAX_MANIFEST_BYTES)
            elif blob is not None:
                _store_blob(content, tar, info, "sha256:" + blob.group(1))
                stored += 1
            # anything else (docker save's manifest.json, repositories) is not part of the layout: skipped
    except tarfile.TarError as exc:
        raise InvalidArgument(f"the archive is damaged or truncated: {exc}") from None
    finally:
        tar.close()
    stream.drain(_TRAILER_LIMIT)
    if layout is None:
        raise InvalidArgument("not an OCI image-layout archive (no oci-layout file); a `docker save` archive "
                              "imports with `capsa image pull docker-archive:PATH`")
    try:
        version = json.loads(layout).get("imageLayoutVersion")
    except (ValueError, AttributeError):
        version = None
    if not isinstance(version, str) or not version.startswith("1."):
        raise InvalidArgument("the archive's oci-layout does not declare a supported imageLayoutVersion (1.x)")
    if index is None:
        raise InvalidArgument("not an OCI image-layout archive: no index.json")
    try:
        parsed = json.loads(index)
    except ValueError as exc:
        raise InvalidArgument(f"the archive's index.json is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidArgument("the archive's index.json is not a JSON object")
    return LoadedArchive(index=parsed, blobs=stored)


def _safe_name(info: tarfile.TarInfo) -> str:
    name = info.name
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/") if info.isdir() else name
    if not name or name == ".":
        return "."
    if name.startswith("/") or "\\" in name or any(part == ".." for part in name.split("/")):
        raise UnsafeArchive(f"archive member {info.name!r} has an absolute or climbing path")
    if "\0" in name or posixpath.normpath(name) != name:
        raise UnsafeArchive(f"archive member {info.name!r} has an irregular path")
    return name


def _read_small(tar: tarfile.TarFile, info: tarfile.TarInfo, limit: int) -> bytes:
    if info.size > limit:
        raise LimitExceeded(f"archive member {info.name} is {info.size} bytes, over the {limit}-byte limit")
    f = tar.extractfile(info)
    assert f is not None
    return f.read()


def _store_blob(content: ContentStore, tar: tarfile.TarFile, info: tarfile.TarInfo, digest: str) -> None:
    f = tar.extractfile(info)
    assert f is not None
    if content.exists(digest) and content.info(digest).size == info.size:
        return   # stored already: the stream moves past the member's data by itself
    with content.writer(f"load-{digest[7:]}", expected=digest, expected_size=info.size) as writer:
        if writer.offset:
            writer.truncate(0)
        while chunk := f.read(_CHUNK):
            writer.write(chunk)
        writer.commit(info.size, digest)


# -- the scratch layout a loaded image is pulled from ------------------------------------------------------
@contextlib.contextmanager
def scratch_layout(content: ContentStore, entry: dict[str, object]) -> Iterator[Path]:
    """An OCI layout holding only ``entry``, whose blobs are the content store's: pull ``oci:<it>``."""
    root = content.root / "load" / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    try:
        (root / "oci-layout").write_bytes(_LAYOUT)
        plain = {k: v for k, v in entry.items() if k != "annotations"}   # untagged: the layout's only image
        (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                     "manifests": [plain]}))
        os.symlink(content.root / "blobs", root / "blobs")
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def entry_digest(entry: dict[str, object]) -> str:
    digest = entry.get("digest")
    if not isinstance(digest, str) or not _BLOB_NAME.match(f"blobs/sha256/{digest.removeprefix('sha256:')}"):
        raise InvalidArgument(f"the archive's index.json has a bad manifest digest: {digest!r}")
    return digest


def check_present(content: ContentStore, digest: str) -> None:
    if not content.exists(digest):
        raise InvalidArgument(f"the archive's index.json names {digest}, which the archive does not hold")



def load(service: ImageService, chunks: Iterable[bytes], *, tag: str = "") -> list[ImageRecord]:
    """Import every image of the OCI archive in ``chunks``; ``tag`` names a lone unnamed one."""
    content, images = service.pc.content, service.pc.images
    archive = read_archive(content, chunks)
    loaded = []
    for entry, name in archive.images(tag):
        check_present(content, entry_digest(entry))
        with scratch_layout(content, entry) as root:
            scratch = service.pull(f"oci:{root}")
            try:
                loaded.append(tag_image(images, scratch, name))
            finally:
                images.delete(scratch.ref)   # only the scratch name: the image lives on under its own
    return loaded
