"""OCI/Docker documents: parsing, media types, platform selection, image synthesis."""

from __future__ import annotations

import json

import pytest

from capsa.errors import InvalidArgument, LimitExceeded, NotFound, Unsupported
from capsa.images.oci import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Compression,
    Index,
    Manifest,
    Platform,
    build_image,
    layer_compression,
    parse_config,
    parse_document,
    select_manifest,
    sha256_digest,
)

D1 = sha256_digest(b"1")
D2 = sha256_digest(b"2")


def _manifest(media_type: str | None = OCI_MANIFEST, layer_type: str = OCI_LAYER_GZIP) -> bytes:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "config": {
            "mediaType": DOCKER_CONFIG
            if media_type == DOCKER_MANIFEST
            else "application/vnd.oci.image.config.v1+json",
            "digest": D1,
            "size": 10,
        },
        "layers": [{"mediaType": layer_type, "digest": D2, "size": 20}],
        "unknownField": {"kept": True},
    }
    if media_type:
        doc["mediaType"] = media_type
    return json.dumps(doc).encode()


def _index(*platforms: dict[str, str], media_type: str = OCI_INDEX) -> Index:
    manifests = [
        {"mediaType": OCI_MANIFEST, "digest": sha256_digest(json.dumps(p).encode()), "size": 1, "platform": p}
        for p in platforms
    ]
    doc = parse_document(
        json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}).encode()
    )
    assert isinstance(doc, Index)
    return doc


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, DOCKER_MANIFEST, None])
def test_manifests_of_each_format_parse_and_keep_unknown_fields(media_type: str | None) -> None:
    doc = parse_document(_manifest(media_type))
    assert isinstance(doc, Manifest)
    assert doc.layers[0].digest == D2 and doc.layers[0].size == 20
    assert doc.model_dump(by_alias=True)["unknownField"] == {"kept": True}


def test_content_type_decides_when_the_document_has_no_media_type() -> None:
    body = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    assert isinstance(parse_document(body, DOCKER_MANIFEST_LIST + "; charset=utf-8"), Index)
    assert isinstance(parse_document(body), Index)


def test_schema1_and_unknown_documents_are_unsupported() -> None:
    with pytest.raises(Unsupported, match="schema 1"):
        parse_document(json.dumps({"schemaVersion": 1, "name": "x", "fsLayers": []}).encode())
    with pytest.raises(Unsupported, match="neither"):
        parse_document(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.example+json"}).encode())


def test_malformed_documents_name_the_problem() -> None:
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        parse_document(b"{nope")
    with pytest.raises(InvalidArgument, match="not a JSON object"):
        parse_document(b"[]")
    bad = json.loads(_manifest())
    bad["layers"][0]["digest"] = "sha256:short"
    with pytest.raises(InvalidArgument, match="layers.0.digest"):
        parse_document(json.dumps(bad).encode())
    with pytest.raises(LimitExceeded):
        parse_document(b" " * (MAX_MANIFEST_BYTES + 1))


@pytest.mark.parametrize(
    ("media_type", "compression"),
    [
        (OCI_LAYER_TAR, Compression.NONE),
        (OCI_LAYER_GZIP, Compression.GZIP),
        (OCI_LAYER_ZSTD, Compression.ZSTD),
        (DOCKER_LAYER_GZIP, Compression.GZIP),
        ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", Compression.ZSTD),
    ],
)
def test_layer_media_types_map_to_compression(media_type: str, compression: Compression) -> None:
    assert layer_compression(media_type) is compression


def test_unknown_layer_media_type_is_unsupported() -> None:
    with pytest.raises(Unsupported, match="application/vnd.example.blob"):
        layer_compression("application/vnd.example.blob")


def test_config_exposes_runtime_defaults() -> None:
    config = parse_config(
        json.dumps(
            {
                "architecture": "arm64",
                "variant": "v8",
                "os": "linux",
                "config": {
                    "Entrypoint": ["/bin/app"],
                    "Cmd": ["--serve"],
                    "Env": ["A=1"],
                    "WorkingDir": "/srv",
                    "User": "1000:1000",
                },
                "rootfs": {"type": "layers", "diff_ids": [D1]},
            }
        ).encode()
    )
    assert config.config.entrypoint == ["/bin/app"] and config.config.cmd == ["--serve"]
    assert (
        config.config.env == ["A=1"]
        and config.config.working_dir == "/srv"
        and config.config.user == "1000:1000"
    )
    assert str(config.platform) == "linux/arm64/v8"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("linux/amd64", "linux/amd64"),
        ("linux/x86_64", "linux/amd64"),
        ("linux/aarch64", "linux/arm64"),
        ("linux/arm64/v8", "linux/arm64/v8"),
        ("linux/arm/7", "linux/arm/v7"),
    ],
)
def test_platform_strings_normalise(spec: str, expected: str) -> None:
    assert str(Platform.parse(spec)) == expected


@pytest.mark.parametrize("spec", ["linux", "Linux/amd64", "linux/amd64/v1/x", "linux//amd64", ""])
def test_bad_platform_strings_are_refused(spec: str) -> None:
    with pytest.raises(InvalidArgument, match="os/arch"):
        Platform.parse(spec)


def test_index_selection_picks_the_requested_platform() -> None:
    index = _index(
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
        {"os": "linux", "architecture": "amd64"},
        {"os": "unknown", "architecture": "unknown"},
    )
    assert select_manifest(index, Platform.default()).platform.architecture == "amd64"  # type: ignore[union-attr]
    arm = select_manifest(index, Platform.parse("linux/arm64"))
    assert arm.platform is not None and arm.platform.variant == "v8"


def test_index_selection_prefers_exact_variant_then_default_variant() -> None:
    index = _index(
        {"os": "linux", "architecture": "arm", "variant": "v6"},
        {"os": "linux", "architecture": "arm", "variant": "v7"},
    )
    chosen = select_manifest(index, Platform.parse("linux/arm"))
    assert chosen.platform is not None and chosen.platform.variant == "v7"
    chosen = select_manifest(index, Platform.parse("linux/arm/v6"))
    assert chosen.platform is not None and chosen.platform.variant == "v6"


def test_index_without_the_platform_is_not_found_listing_what_it_offers() -> None:
    index = _index(
        {"os": "linux", "architecture": "arm64"},
        {"os": "windows", "architecture": "amd64"},
        media_type=DOCKER_MANIFEST_LIST,
    )
    with pytest.raises(NotFound, match=r"linux/s390x.*linux/arm64, windows/amd64"):
        select_manifest(index, Platform.parse("linux/s390x"))


def test_build_image_produces_a_parseable_manifest_with_matching_digests() -> None:
    config = parse_config(b'{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]}}')
    built = build_image(config, [(D1, 10, OCI_LAYER_TAR), (D2, 20, OCI_LAYER_TAR)])
    manifest = parse_document(built.manifest)
    assert isinstance(manifest, Manifest)
    assert manifest.config.digest == built.config_digest == sha256_digest(built.config)
    assert [la.digest for la in manifest.layers] == [D1, D2]
    assert parse_config(built.config).rootfs.diff_ids == [D1, D2]
    assert built.manifest_digest == sha256_digest(built.manifest)
    with pytest.raises(InvalidArgument, match="diff_ids"):
        build_image(config, [(D1, 10, OCI_LAYER_GZIP)])
