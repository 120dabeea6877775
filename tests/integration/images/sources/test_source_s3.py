"""The S3 source against a real moto S3 server over HTTP."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import pytest

from capsa.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthorized, Unavailable
from capsa.images.content import ContentStore
from capsa.images.oci import Compression, Digest, sha256_digest
from capsa.images.reference import parse_reference
from capsa.images.sources.base import BlobDescriptor
from capsa.images.sources.s3 import S3Config, S3Source, map_s3_error
from capsa.state.db import Database
from tests.fixtures.images import S3Images
from tests.fixtures.servers import MotoServer, free_port


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ContentStore]:
    db = Database(tmp_path / "capsa.db")
    yield ContentStore(tmp_path / "content", db)
    db.close()


def _fetch(source: S3Source, store: ContentStore, layer: BlobDescriptor) -> Digest:
    known = store.lookup_hint(layer.dedupe_hint or "")
    if known is not None:
        return known
    with store.writer(layer.ingest_ref, expected_size=layer.size) as w:
        source.fetch_blob(layer, w)
        digest = w.commit(layer.size, media_type=layer.media_type).digest
    store.record_hint(layer.dedupe_hint or "", digest)
    return digest


def test_prefix_layers_come_in_numeric_order_and_others_are_ignored(
    s3_env: dict[str, str], moto_server: MotoServer, s3_bucket: str
) -> None:
    client = moto_server.client()
    for n in (10, 2, 1):
        client.put_object(Bucket=s3_bucket, Key=f"images/app/{n}.tar", Body=f"layer {n}".encode())
    for other in ("images/app/README", "images/app/3.tar.bak", "images/app/x.tar", "images/app/nested/4.tar"):
        client.put_object(Bucket=s3_bucket, Key=other, Body=b"ignored")
    image = S3Source().resolve(parse_reference(f"s3://{s3_bucket}/images/app/"))
    assert [la.locator for la in image.layers] == [f"s3://{s3_bucket}/images/app/{n}.tar" for n in (1, 2, 10)]
    assert all(la.digest is None and la.compression is Compression.NONE for la in image.layers)
    assert [la.size for la in image.layers] == [7, 7, 8]
    assert image.manifest_digest is None and str(image.platform) == "linux/amd64"
    etag = hashlib.md5(b"layer 1").hexdigest()  # noqa: S324 - S3's ETag of a plain upload is its MD5
    assert image.layers[0].dedupe_hint is not None and image.layers[0].dedupe_hint.endswith(f"#{etag}:7")


def test_prefix_without_layers_is_not_found_naming_what_is_there(
    s3_env: dict[str, str], moto_server: MotoServer, s3_bucket: str
) -> None:
    moto_server.client().put_object(Bucket=s3_bucket, Key="images/empty/notes.txt", Body=b"x")
    with pytest.raises(NotFound, match=r"no <n>.tar layer objects.*notes.txt"):
        S3Source().resolve(parse_reference(f"s3://{s3_bucket}/images/empty/"))


def test_duplicate_layer_numbers_are_refused(
    s3_env: dict[str, str], moto_server: MotoServer, s3_bucket: str
) -> None:
    client = moto_server.client()
    client.put_object(Bucket=s3_bucket, Key="images/dup/1.tar", Body=b"a")
    client.put_object(Bucket=s3_bucket, Key="images/dup/01.tar", Body=b"b")
    with pytest.raises(InvalidArgument, match="both claim layer 1"):
        S3Source().resolve(parse_reference(f"s3://{s3_bucket}/images/dup/"))


def test_seed_layout_families_pull_and_share_their_first_layer(
    s3_env: dict[str, str], s3_images: S3Images, store: ContentStore
) -> None:
    source = S3Source()
    busybox = source.resolve(parse_reference(s3_images.refs["busybox"]))
    whiteout = source.resolve(parse_reference(s3_images.refs["whiteout"]))
    assert len(busybox.layers) == 1 and len(whiteout.layers) == 3
    assert busybox.layers[0].dedupe_hint == whiteout.layers[0].dedupe_hint  # same bucket, same ETag and size
    digests = [_fetch(source, store, la) for la in busybox.layers + whiteout.layers]
    assert digests == [
        sha256_digest(t) for t in (*s3_images.layers["busybox"], *s3_images.layers["whiteout"])
    ]
    assert len(list(store.walk())) == 3  # the shared layer is stored once


def test_single_key_is_a_single_layer_image(
    s3_env: dict[str, str], s3_images: S3Images, store: ContentStore
) -> None:
    source = S3Source()
    image = source.resolve(parse_reference(s3_images.single))
    (layer,) = image.layers
    assert layer.locator == s3_images.single and layer.size == len(s3_images.layers["busybox"][0])
    assert _fetch(source, store, layer) == sha256_digest(s3_images.layers["busybox"][0])


def test_missing_key_and_bucket_are_not_found(s3_env: dict[str, str], s3_bucket: str) -> None:
    with pytest.raises(NotFound):
        S3Source().resolve(parse_reference(f"s3://{s3_bucket}/nothing/here.tar"))
    with pytest.raises(NotFound):
        S3Source().resolve(parse_reference("s3://no-such-bucket-capsa/images/x/"))


def test_bad_key_is_rejected_before_any_request(moto_server: MotoServer) -> None:
    source = S3Source(
        S3Config(endpoint_url=f"http://127.0.0.1:{free_port()}", access_key_id="a", secret_access_key="b")
    )
    bad = BlobDescriptor(
        media_type="application/vnd.oci.image.layer.v1.tar",
        size=1,
        digest=None,
        locator="s3://bucket/../../etc/passwd",
    )
    with pytest.raises(InvalidArgument, match="'..' path segment"):
        source.fetch_blob(bad, None)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        parse_reference("s3://bucket/images/../secret/")


def test_resume_uses_a_range_get(
    s3_env: dict[str, str], moto_server: MotoServer, s3_bucket: str, store: ContentStore
) -> None:
    data = hashlib.shake_256(b"s3 resume").digest(3 * 1024 * 1024 + 11)
    moto_server.client().put_object(Bucket=s3_bucket, Key="big/1.tar", Body=data)
    source = S3Source()
    (layer,) = source.resolve(parse_reference(f"s3://{s3_bucket}/big/")).layers
    with store.writer(layer.ingest_ref, expected_size=layer.size) as w:
        w.write(data[:1_234_567])
    seen: list[int] = []
    with store.writer(layer.ingest_ref, expected_size=layer.size) as w:
        assert w.offset == 1_234_567
        source.fetch_blob(layer, w, progress=lambda done, total: seen.append(done))
        assert w.commit(len(data), sha256_digest(data)).size == len(data)
    # only the missing part travelled: the first chunk lands past the resumed offset, at most a chunk later
    assert 1_234_567 < seen[0] <= 1_234_567 + 1024 * 1024


def test_object_replaced_between_resolve_and_fetch_is_refused(
    s3_env: dict[str, str], moto_server: MotoServer, s3_bucket: str, store: ContentStore
) -> None:
    client = moto_server.client()
    client.put_object(Bucket=s3_bucket, Key="moving/1.tar", Body=b"version one")
    source = S3Source()
    (layer,) = source.resolve(parse_reference(f"s3://{s3_bucket}/moving/")).layers
    client.put_object(Bucket=s3_bucket, Key="moving/1.tar", Body=b"version two")
    with (
        store.writer(layer.ingest_ref) as w,
        pytest.raises(FailedPrecondition, match="changed since it was resolved"),
    ):
        source.fetch_blob(layer, w)


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("AccessDenied", 403, Unauthorized),
        ("InvalidAccessKeyId", 403, Unauthorized),
        ("SignatureDoesNotMatch", 403, Unauthorized),
        ("NoSuchKey", 404, NotFound),
        ("NoSuchBucket", 404, NotFound),
        ("SlowDown", 503, Unavailable),
        ("InternalError", 500, Unavailable),
        ("PreconditionFailed", 412, FailedPrecondition),
        ("SomethingNew", 400, FailedPrecondition),   # unknown refusals are not retried (images and capsules alike)
    ],
)
def test_s3_error_codes_map_to_the_shared_vocabulary(code: str, status: int, kind: type[Exception]) -> None:
    error = botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
    )
    mapped = map_s3_error(error, "test")
    assert type(mapped) is kind, mapped


def test_capsules_map_s3_errors_with_the_same_function() -> None:
    from capsa.capsules import distribution
    from capsa.images.sources import s3

    assert distribution.s3_errors is s3.s3_errors


def test_unreachable_endpoint_is_unavailable() -> None:
    config = S3Config(
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        access_key_id="a",
        secret_access_key="b",
        max_attempts=1,
        connect_timeout=1,
    )
    with pytest.raises(Unavailable):
        S3Source(config, env={}).resolve(parse_reference("s3://bucket/images/x/"))


def test_config_falls_back_to_standard_aws_environment() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "SeCrEt-xyz",
    }
    config = S3Config(region="us-west-2").with_env(env)
    assert (config.endpoint_url, config.region, config.access_key_id) == (
        "http://127.0.0.1:9",
        "us-west-2",
        "id",
    )
    assert "SeCrEt-xyz" not in repr(config) and config.secret_access_key == "SeCrEt-xyz"
    assert (
        S3Config().with_env({"AWS_ENDPOINT_URL_S3": "http://a", "AWS_ENDPOINT_URL": "http://b"}).endpoint_url
        == "http://a"
    )


def test_upload_small_and_multipart_round_trip(
    s3_env: dict[str, str], moto_server: MotoServer, s3_bucket: str, tmp_path: Path
) -> None:
    source = S3Source()
    big = hashlib.shake_256(b"multipart").digest(11 * 1024 * 1024 + 3)
    path = tmp_path / "big.tar"
    path.write_bytes(big)
    etag = source.upload(
        s3_bucket, "capsules/big.tar", path, part_size=5 * 1024 * 1024, multipart_threshold=5 * 1024 * 1024
    )
    assert etag.endswith("-3")  # three parts: 5 MiB, 5 MiB, the rest
    assert moto_server.client().get_object(Bucket=s3_bucket, Key="capsules/big.tar")["Body"].read() == big
    source.upload(s3_bucket, "capsules/small.tar", path.open("rb"), multipart_threshold=64 * 1024 * 1024)
    with pytest.raises(InvalidArgument):
        source.upload(s3_bucket, "../escape.tar", path)
