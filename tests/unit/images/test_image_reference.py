"""Reference parsing: every kind, normalisation, and refusals that name the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsa.errors import InvalidArgument, Unsupported
from capsa.images.reference import RefKind, parse_reference, validate_s3_key

D = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest", "canonical"),
    [
        ("alpine", "docker.io", "library/alpine", "latest", None, "docker.io/library/alpine:latest"),
        ("alpine:3.20", "docker.io", "library/alpine", "3.20", None, "docker.io/library/alpine:3.20"),
        ("team/app", "docker.io", "team/app", "latest", None, "docker.io/team/app:latest"),
        (
            "registry.example.com/library/alpine:3.20",
            "registry.example.com",
            "library/alpine",
            "3.20",
            None,
            "registry.example.com/library/alpine:3.20",
        ),
        (
            "127.0.0.1:5000/team/app:1.4",
            "127.0.0.1:5000",
            "team/app",
            "1.4",
            None,
            "127.0.0.1:5000/team/app:1.4",
        ),
        ("localhost/app", "localhost", "app", "latest", None, "localhost/app:latest"),
        (
            "localhost:5000/a/b/c:v1_2-3.x",
            "localhost:5000",
            "a/b/c",
            "v1_2-3.x",
            None,
            "localhost:5000/a/b/c:v1_2-3.x",
        ),
        ("[::1]:5000/app:1", "[::1]:5000", "app", "1", None, "[::1]:5000/app:1"),
        (f"alpine@{D}", "docker.io", "library/alpine", None, D, f"docker.io/library/alpine@{D}"),
        (f"quay.io/org/app:1@{D}", "quay.io", "org/app", "1", D, f"quay.io/org/app:1@{D}"),
        (
            "index.docker.io/library/busybox",
            "docker.io",
            "library/busybox",
            "latest",
            None,
            "docker.io/library/busybox:latest",
        ),
        ("docker://ghcr.io/o/r:t", "ghcr.io", "o/r", "t", None, "ghcr.io/o/r:t"),
        (
            "my-registry.local:443/a.b/c__d/e--f:tag",
            "my-registry.local:443",
            "a.b/c__d/e--f",
            "tag",
            None,
            "my-registry.local:443/a.b/c__d/e--f:tag",
        ),
    ],
)
def test_registry_references(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None, canonical: str
) -> None:
    ref = parse_reference(text)
    assert ref.kind is RefKind.REGISTRY
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert ref.canonical == str(ref) == canonical
    assert parse_reference(ref.canonical) == ref


def test_docker_hub_is_served_by_its_api_host() -> None:
    assert parse_reference("alpine").api_host == "registry-1.docker.io"
    assert parse_reference("127.0.0.1:5000/a").api_host == "127.0.0.1:5000"
    assert parse_reference(f"a:1@{D}").manifest_reference == D
    assert parse_reference("a:1").manifest_reference == "1"


@pytest.mark.parametrize(
    ("text", "bucket", "key", "prefix"),
    [
        ("s3://images-bucket/images/python/", "images-bucket", "images/python/", True),
        ("s3://images-bucket/", "images-bucket", "", True),
        ("s3://images-bucket/exports/rootfs.tar", "images-bucket", "exports/rootfs.tar", False),
        ("s3://b.example-1/x/y.tar.gz", "b.example-1", "x/y.tar.gz", False),
        ("s3://bkt/a/v1.2(final)/", "bkt", "a/v1.2(final)/", True),
    ],
)
def test_s3_references(text: str, bucket: str, key: str, prefix: bool) -> None:
    ref = parse_reference(text)
    assert (ref.kind, ref.bucket, ref.key, ref.is_s3_prefix) == (RefKind.S3, bucket, key, prefix)
    assert ref.canonical == text
    assert parse_reference(ref.canonical) == ref


@pytest.mark.parametrize(
    ("text", "kind", "path", "tag"),
    [
        ("oci:./layout:tag", RefKind.OCI_LAYOUT, Path("layout"), "tag"),
        ("oci:/srv/layout", RefKind.OCI_LAYOUT, Path("/srv/layout"), None),
        ("oci:/srv/layout:v1.0", RefKind.OCI_LAYOUT, Path("/srv/layout"), "v1.0"),
        ("docker-archive:./saved.tar", RefKind.DOCKER_ARCHIVE, Path("saved.tar"), None),
        (
            "docker-archive:/x/saved.tar:busybox:1",
            RefKind.DOCKER_ARCHIVE,
            Path("/x/saved.tar"),
            "docker.io/library/busybox:1",
        ),
    ],
)
def test_local_references(text: str, kind: RefKind, path: Path, tag: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.kind, ref.path, ref.tag) == (kind, path, tag)
    assert parse_reference(ref.canonical) == ref


def test_relative_local_paths_are_made_absolute_against_the_callers_directory() -> None:
    ref = parse_reference("oci:./layout:tag", base_dir=Path("/home/u/work"))
    assert ref.path == Path("/home/u/work/layout")
    assert parse_reference("alpine", base_dir=Path("/x")).path is None


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("alpine latest", "whitespace"),
        ("alp\x00ine", "control"),
        ("Alpine", "must be lowercase"),
        ("registry.example.com/Team/app", "must be lowercase"),
        ("alpine:", "tag ''"),
        ("alpine:-bad", "tag '-bad'"),
        ("alpine:" + "t" * 129, "tag"),
        ("a//b", "empty path component"),
        ("registry.example.com/", "no repository"),
        ("registry.example.com:99999/app", "port '99999'"),
        ("registry.example.com:http/app", "port 'http'"),
        ("bad_host.example.com/app", "not a valid host"),
        ("[::1/app", "unterminated"),
        ("alpine@sha256:abc", "64"),
        ("alpine@sha256", "malformed digest"),
        ("a/" + "b" * 260, "longer than 255"),
        ("https://registry.example.com/app", "scheme 'https://' is not supported"),
        ("ftp://x/y", "not supported"),
        ("s3://", "no bucket"),
        ("s3://bucket", "add '/'"),
        ("s3://Bucket/x.tar", "bucket name"),
        ("s3://ab/x.tar", "bucket name"),
        ("s3://192.168.1.1/x.tar", "IP address"),
        ("s3://bucket/../etc/passwd.tar", "'..' path segment"),
        ("s3://bucket/a/../../b/", "'..' path segment"),
        ("s3://bucket//abs.tar", "must not start with '/'"),
        ("s3://bucket/a//b.tar", "empty path segment"),
        ("s3://bucket/a/./b.tar", "'.' path segment"),
        ("s3://bucket/a/b%2e%2e.tar", "characters outside the allowed set"),
        ("s3://bucket/a\\b.tar", "characters outside the allowed set"),
        ("s3://bucket/rootfs.zip", "one object ending in .tar"),
        ("s3://bucket/" + "k" * 1030 + ".tar", "1024-byte maximum"),
        ("oci:", "no path"),
        ("oci:/x:", "empty tag"),
        ("oci:/x:a/b", "tag 'a/b' is invalid"),
        ("docker-archive:", "no path"),
        ("docker-archive:/x.tar:Busybox", "lowercase"),
    ],
)
def test_bad_references_are_refused_naming_the_problem(text: str, complaint: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_reference(text)
    assert complaint in str(err.value)


def test_foreign_digest_algorithm_is_unsupported_not_malformed() -> None:
    with pytest.raises(Unsupported, match="sha512"):
        parse_reference("alpine@sha512:" + "a" * 128)


def test_s3_key_validation_distinguishes_prefixes_from_objects() -> None:
    assert validate_s3_key("images/python/", prefix=True) == "images/python/"
    assert validate_s3_key("", prefix=True) == ""
    with pytest.raises(InvalidArgument, match="must end with '/'"):
        validate_s3_key("images/python", prefix=True)
    with pytest.raises(InvalidArgument, match="must not end with '/'"):
        validate_s3_key("images/python/")
    with pytest.raises(InvalidArgument, match="empty"):
        validate_s3_key("")
