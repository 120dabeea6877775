"""Local sources: OCI image layouts and docker-save archives on disk."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsa.errors import ChecksumMismatch, InvalidArgument, NotFound
from capsa.images.content import ContentStore
from capsa.images.oci import DOCKER_LAYER_TAR, OCI_LAYER_GZIP, Compression, Platform, sha256_digest
from capsa.images.reference import parse_reference
from capsa.images.sources.base import BlobDescriptor
from capsa.images.sources.local import LocalSource
from capsa.state.db import Database
from tests.fixtures.images import (
    LayoutImages,
    busybox_image,
    whiteout_image,
    write_docker_archive,
    write_oci_layout,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ContentStore]:
    db = Database(tmp_path / "capsa.db")
    yield ContentStore(tmp_path / "content", db)
    db.close()


def _fetch(store: ContentStore, layer: BlobDescriptor) -> bytes:
    with store.writer(layer.ingest_ref, expected=layer.digest, expected_size=layer.size) as w:
        LocalSource().fetch_blob(layer, w)
        info = w.commit(layer.size)
    return store.path(info.digest).read_bytes()


# -- OCI layouts -------------------------------------------------------------------------------------


def test_oci_layout_tag_resolves_to_its_manifest_and_layers(
    test_images: LayoutImages, store: ContentStore
) -> None:
    image = LocalSource().resolve(parse_reference(test_images.ref("whiteout")))
    expected = test_images.images["whiteout"]
    assert image.manifest_digest == expected.manifest_digest == test_images.digests["whiteout"]
    assert image.config.config.entrypoint == ["/bin/cat"] and image.config.config.user == "0:0"
    assert [la.compression for la in image.layers] == [Compression.GZIP, Compression.NONE, Compression.ZSTD]
    assert [_fetch(store, la) for la in image.layers] == [la.blob for la in expected.layers]


def test_oci_layout_index_entry_is_narrowed_to_the_platform(test_images: LayoutImages) -> None:
    ref = parse_reference(test_images.ref("multi"))
    arm = LocalSource().resolve(ref, Platform.parse("linux/arm64/v8"))
    assert arm.index_digest == test_images.digests["multi"]
    assert arm.config.config.cmd == ["/bin/false"]
    assert LocalSource().resolve(ref).manifest_digest == test_images.images["busybox"].manifest_digest


def test_oci_layout_unknown_or_missing_tag_names_the_available_ones(test_images: LayoutImages) -> None:
    with pytest.raises(NotFound, match="busybox, multi, whiteout"):
        LocalSource().resolve(parse_reference(test_images.ref("nope")))
    with pytest.raises(InvalidArgument, match="holds 3 images"):
        LocalSource().resolve(parse_reference(f"oci:{test_images.path}"))


def test_single_image_layout_needs_no_tag(tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "one", {"only": busybox_image()})
    image = LocalSource().resolve(parse_reference(f"oci:{tmp_path / 'one'}"))
    assert image.manifest_digest == busybox_image().manifest_digest


def test_directory_that_is_not_a_layout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no oci-layout file"):
        LocalSource().resolve(parse_reference(f"oci:{tmp_path}"))
    with pytest.raises(NotFound, match="not a directory"):
        LocalSource().resolve(parse_reference(f"oci:{tmp_path / 'absent'}"))


def test_tampered_manifest_blob_in_layout_is_detected(tmp_path: Path) -> None:
    digests = write_oci_layout(tmp_path / "l", {"t": busybox_image()})
    blob = tmp_path / "l" / "blobs" / "sha256" / digests["t"].hex
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes().replace(b'"schemaVersion": 2', b'"schemaVersion":  2'))
    with pytest.raises(ChecksumMismatch, match=digests["t"]):
        LocalSource().resolve(parse_reference(f"oci:{tmp_path / 'l'}:t"))


def test_symlinked_blob_in_layout_is_not_followed(tmp_path: Path) -> None:
    digests = write_oci_layout(tmp_path / "l", {"t": busybox_image()})
    blob = tmp_path / "l" / "blobs" / "sha256" / digests["t"].hex
    real = tmp_path / "elsewhere"
    real.write_bytes(blob.read_bytes())
    blob.unlink()
    blob.symlink_to(real)
    with pytest.raises(InvalidArgument, match="cannot open"):
        LocalSource().resolve(parse_reference(f"oci:{tmp_path / 'l'}:t"))


def test_layout_layer_resumes_from_an_offset(test_images: LayoutImages, store: ContentStore) -> None:
    layer = LocalSource().resolve(parse_reference(test_images.ref("busybox"))).layers[0]
    blob = test_images.images["busybox"].layers[0].blob
    with store.writer(layer.ingest_ref, expected=layer.digest, expected_size=layer.size) as w:
        w.write(blob[:1000])
    assert _fetch(store, layer) == blob


# -- docker-archive ------------------------------------------------------------------------------------------


def test_docker_archive_classic_layout_streams_layers_from_the_tar(
    tmp_path: Path, store: ContentStore
) -> None:
    image = whiteout_image()
    archive = write_docker_archive(tmp_path / "saved.tar", {"example.com/team/whiteout:1": image})
    resolved = LocalSource().resolve(parse_reference(f"docker-archive:{archive}"))
    assert resolved.config_digest == sha256_digest(image.config_bytes)
    assert resolved.config.config.cmd == ["/added.txt"]
    assert [la.media_type for la in resolved.layers] == [DOCKER_LAYER_TAR] * 3
    # uncompressed layers are identified by the config's diff_ids before any byte is read
    assert [la.digest for la in resolved.layers] == [la.diff_id for la in image.layers]
    assert [_fetch(store, la) for la in resolved.layers] == [la.tar for la in image.layers]


def test_docker_archive_with_two_images_selects_by_name_and_follows_shared_layer_symlinks(
    tmp_path: Path, store: ContentStore
) -> None:
    busybox, whiteout = busybox_image(), whiteout_image()
    archive = write_docker_archive(tmp_path / "two.tar", {"busybox:1": busybox, "team/whiteout:2": whiteout})
    with pytest.raises(InvalidArgument, match="holds 2 images"):
        LocalSource().resolve(parse_reference(f"docker-archive:{archive}"))
    resolved = LocalSource().resolve(parse_reference(f"docker-archive:{archive}:team/whiteout:2"))
    assert len(resolved.layers) == 3
    # whiteout's first layer is busybox's: docker save stores it once and symlinks the second copy
    assert _fetch(store, resolved.layers[0]) == busybox.layers[0].tar
    with pytest.raises(NotFound, match="busybox:1, team/whiteout:2"):
        LocalSource().resolve(parse_reference(f"docker-archive:{archive}:other:1"))


def test_docker_archive_with_oci_names_keeps_layer_compression(tmp_path: Path, store: ContentStore) -> None:
    image = busybox_image(compression="gzip")
    archive = write_docker_archive(tmp_path / "new.tar", {"busybox:latest": image}, oci_names=True)
    (layer,) = LocalSource().resolve(parse_reference(f"docker-archive:{archive}")).layers
    assert layer.media_type == OCI_LAYER_GZIP and layer.digest == image.layers[0].digest
    assert _fetch(store, layer) == image.layers[0].blob
    assert gzip.decompress(image.layers[0].blob) == image.layers[0].tar


def test_compressed_or_non_archive_files_are_refused(tmp_path: Path) -> None:
    archive = write_docker_archive(tmp_path / "saved.tar", {"busybox:1": busybox_image()})
    gz = tmp_path / "saved.tar.gz"
    gz.write_bytes(gzip.compress(archive.read_bytes()))
    with pytest.raises(InvalidArgument, match="decompress it first"):
        LocalSource().resolve(parse_reference(f"docker-archive:{gz}"))
    junk = tmp_path / "junk.tar"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(InvalidArgument, match="not a readable tar"):
        LocalSource().resolve(parse_reference(f"docker-archive:{junk}"))
    with pytest.raises(NotFound):
        LocalSource().resolve(parse_reference(f"docker-archive:{tmp_path / 'absent.tar'}"))


def test_archive_layer_tampered_after_resolve_fails_its_digest(tmp_path: Path, store: ContentStore) -> None:
    image = busybox_image()
    archive = write_docker_archive(tmp_path / "saved.tar", {"busybox:1": image})
    (layer,) = LocalSource().resolve(parse_reference(f"docker-archive:{archive}")).layers
    data = bytearray(archive.read_bytes())
    start = data.find(b"bin/busybox")
    data[start + 5000] ^= 0xFF  # flip a byte inside the layer member
    archive.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match=f"expected {layer.digest}"):
        _fetch(store, layer)
    assert store.ingests() == []


def test_manifest_json_that_is_not_docker_save_output_is_refused(tmp_path: Path) -> None:
    import io
    import tarfile

    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        payload = json.dumps({"not": "a list"}).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(InvalidArgument, match="not a non-empty list"):
        LocalSource().resolve(parse_reference(f"docker-archive:{path}"))
