"""The registry source against a real Debian docker-registry on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from capsa.errors import FailedPrecondition, NotFound
from capsa.images.content import ContentStore
from capsa.images.oci import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    Compression,
    Platform,
    sha256_digest,
)
from capsa.images.reference import parse_reference
from capsa.images.sources.base import BlobDescriptor
from capsa.images.sources.registry import RegistryClient, RegistryConfig, RegistrySource
from capsa.state.db import Database
from tests.fixtures.images import LayoutImages, RegistryImages
from tests.fixtures.servers import RegistryServer


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ContentStore]:
    db = Database(tmp_path / "capsa.db")
    yield ContentStore(tmp_path / "content", db)
    db.close()


def _fetch(source: RegistrySource, store: ContentStore, layer: BlobDescriptor) -> bytes:
    with store.writer(layer.ingest_ref, expected=layer.digest, expected_size=layer.size) as w:
        source.fetch_blob(layer, w)
        info = w.commit(layer.size, layer.digest, media_type=layer.media_type)
    return store.path(info.digest).read_bytes()


def test_anonymous_pull_of_manifest_config_and_layers(
    registry_images: RegistryImages, test_images: LayoutImages, store: ContentStore
) -> None:
    source = RegistrySource()
    image = source.resolve(parse_reference(registry_images.refs["busybox"]))
    expected = test_images.images["busybox"]
    assert (
        image.manifest_digest
        == registry_images.digests["busybox"]
        == sha256_digest(image.manifest_bytes or b"")
    )
    assert image.config.config.cmd == ["/bin/sh"]
    assert "CAPSA_TEST=busybox" in (image.config.config.env or [])
    assert str(image.platform) == "linux/amd64"
    assert [la.digest for la in image.layers] == [la.digest for la in expected.layers]
    assert _fetch(source, store, image.layers[0]) == expected.layers[0].blob


def test_index_with_two_platforms_selects_the_requested_one(
    registry_images: RegistryImages, test_images: LayoutImages
) -> None:
    source = RegistrySource()
    ref = parse_reference(registry_images.refs["multi"])
    amd64 = source.resolve(ref)
    arm64 = source.resolve(ref, Platform.parse("linux/arm64"))
    assert amd64.index_digest == arm64.index_digest == registry_images.digests["multi"]
    by_platform = {str(p): img for p, img in test_images.multi.items()}
    assert amd64.manifest_digest == by_platform["linux/amd64"].manifest_digest
    assert arm64.manifest_digest == by_platform["linux/arm64/v8"].manifest_digest
    assert str(arm64.platform) == "linux/arm64/v8" and arm64.config.config.cmd == ["/bin/false"]
    with pytest.raises(NotFound, match="linux/s390x"):
        source.resolve(ref, Platform.parse("linux/s390x"))


def test_gzip_zstd_and_uncompressed_layers_are_recognised(
    registry_images: RegistryImages, test_images: LayoutImages, store: ContentStore
) -> None:
    source = RegistrySource()
    image = source.resolve(parse_reference(registry_images.refs["whiteout"]))
    assert [la.compression for la in image.layers] == [Compression.GZIP, Compression.NONE, Compression.ZSTD]
    assert image.config.config.entrypoint == ["/bin/cat"] and image.config.config.working_dir == "/data"
    for layer, want in zip(image.layers[1:], test_images.images["whiteout"].layers[1:], strict=True):
        assert _fetch(source, store, layer) == want.blob


def test_layers_of_one_image_download_in_parallel(
    registry_images: RegistryImages, test_images: LayoutImages, store: ContentStore
) -> None:
    source = RegistrySource()
    image = source.resolve(parse_reference(registry_images.refs["whiteout"]))
    with ThreadPoolExecutor(max_workers=3) as pool:
        blobs = list(pool.map(lambda layer: _fetch(source, store, layer), image.layers))
    assert blobs == [la.blob for la in test_images.images["whiteout"].layers]


def test_download_resumes_with_range_from_a_partial_ingest(
    registry_images: RegistryImages, test_images: LayoutImages, store: ContentStore
) -> None:
    source = RegistrySource()
    layer = source.resolve(parse_reference(registry_images.refs["busybox"])).layers[0]
    blob = test_images.images["busybox"].layers[0].blob
    half = len(blob) // 2
    with store.writer(layer.ingest_ref, expected=layer.digest, expected_size=layer.size) as w:
        w.write(blob[:half])
    progress: list[int] = []
    with store.writer(layer.ingest_ref, expected=layer.digest, expected_size=layer.size) as w:
        assert w.offset == half
        source.fetch_blob(layer, w, progress=lambda done, total: progress.append(done))
        assert w.commit().digest == layer.digest
    assert progress[0] > half and progress[-1] == len(blob)


def test_unknown_tag_and_repository_are_not_found(registry_server: RegistryServer) -> None:
    source = RegistrySource()
    with pytest.raises(NotFound, match="MANIFEST_UNKNOWN|NAME_UNKNOWN"):
        source.resolve(parse_reference(registry_server.ref("capsa-test/nothing-here:1")))


def test_push_blobs_monolithic_and_chunked_then_manifest_round_trips(
    registry_server: RegistryServer, test_images: LayoutImages, store: ContentStore, tmp_path: Path
) -> None:
    client = RegistryClient(registry_server.host)
    image = test_images.images["whiteout"]
    repo = "capsa-test/pushed"
    big = image.layers[1].blob  # the uncompressed data layer
    blob_file = tmp_path / "layer"
    blob_file.write_bytes(big)
    assert client.push_blob(repo, blob_file, image.layers[1].digest, len(big), chunk_size=4096) is True
    assert client.push_blob(repo, blob_file, image.layers[1].digest, len(big)) is False  # HEAD says present
    for layer in (image.layers[0], image.layers[2]):
        assert client.push_blob(repo, layer.blob, layer.digest, len(layer.blob)) is True
    client.push_blob(repo, image.config_bytes, sha256_digest(image.config_bytes), len(image.config_bytes))
    digest = client.push_manifest(
        repo, "v1", image.manifest_bytes, "application/vnd.oci.image.manifest.v1+json"
    )
    assert digest == image.manifest_digest
    resolved = RegistrySource().resolve(parse_reference(f"{registry_server.host}/{repo}:v1"))
    assert resolved.manifest_digest == digest
    assert resolved.layers[1].digest == image.layers[1].digest


def test_docker_schema2_manifest_and_manifest_list_resolve(
    registry_server: RegistryServer, test_images: LayoutImages
) -> None:
    client = RegistryClient(registry_server.host)
    image = test_images.images["busybox"]
    repo = "capsa-test/docker-format"
    layer = image.layers[0]
    config = image.config_bytes
    client.push_blob(repo, layer.blob, layer.digest, len(layer.blob))
    client.push_blob(repo, config, sha256_digest(config), len(config))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": len(config), "digest": sha256_digest(config)},
            "layers": [{"mediaType": DOCKER_LAYER_GZIP, "size": len(layer.blob), "digest": layer.digest}],
        }
    ).encode()
    manifest_digest = client.push_manifest(repo, "schema2", manifest, DOCKER_MANIFEST)
    listing = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_LIST,
            "manifests": [
                {
                    "mediaType": DOCKER_MANIFEST,
                    "size": len(manifest),
                    "digest": manifest_digest,
                    "platform": {"architecture": "amd64", "os": "linux"},
                }
            ],
        }
    ).encode()
    list_digest = client.push_manifest(repo, "list", listing, DOCKER_MANIFEST_LIST)
    source = RegistrySource()
    direct = source.resolve(parse_reference(f"{registry_server.host}/{repo}:schema2"))
    via_list = source.resolve(parse_reference(f"{registry_server.host}/{repo}:list"))
    by_digest = source.resolve(parse_reference(f"{registry_server.host}/{repo}@{manifest_digest}"))
    assert direct.manifest_digest == via_list.manifest_digest == by_digest.manifest_digest == manifest_digest
    assert via_list.index_digest == list_digest
    assert direct.manifest_media_type == DOCKER_MANIFEST
    assert direct.layers[0].compression is Compression.GZIP


def test_plain_http_is_only_for_loopback_or_insecure_hosts() -> None:
    assert RegistryClient("127.0.0.1:5000").base_url == "http://127.0.0.1:5000"
    assert RegistryClient("localhost:5000").base_url == "http://localhost:5000"
    assert RegistryClient("[::1]:5000").base_url == "http://[::1]:5000"
    assert RegistryClient("registry.example.com").base_url == "https://registry.example.com"
    insecure = RegistryConfig(insecure=frozenset({"10.1.2.3:5000"}))
    assert RegistryClient("10.1.2.3:5000", insecure).base_url == "http://10.1.2.3:5000"
    assert RegistryClient("10.1.2.3:5001", insecure).base_url == "https://10.1.2.3:5001"
    client = RegistryClient("registry.example.com")
    with pytest.raises(FailedPrecondition, match=r"refusing http://registry.example.com.*insecure"):
        client._check_transport("http://registry.example.com/v2/", "test")
