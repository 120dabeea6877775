"""`capsa image pull/ls/inspect/history` through the CLI, against a real registry, real S3 (moto) and local files.

Every pull is checked against what the source really holds: the digests the
registry reports, the sha256 of the tarballs uploaded to S3, and the files that
end up in the layer snapshots on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_helpers import (
    ImageDaemon,
    blob_hexes,
    image_daemon,
    ingest_leftovers,
    layer_dir,
    one_line_error,
    query,
)

from tests.fixtures.images import LayoutImages, RegistryImages, S3Images, TarBuilder, write_docker_archive
from tests.fixtures.servers import MotoServer


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory, moto_server: MotoServer) -> Iterator[ImageDaemon]:
    with image_daemon(tmp_path_factory.mktemp("img-cli") / "home", env=moto_server.env) as daemon:
        yield daemon


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_dirs(d: ImageDaemon, ref: str) -> list[Path]:
    rows = query(d.home, "SELECT chain_json FROM images WHERE ref = ?", (ref,))
    assert rows, f"{ref} is not recorded"
    return [layer_dir(d.home, key) for key in json.loads(rows[0]["chain_json"])]


def merged_file(d: ImageDaemon, ref: str, path: str) -> bytes:
    """A file as the image's top-most layer holding it has it (what overlayfs shows a job)."""
    for layer in reversed(chain_dirs(d, ref)):
        candidate = layer / path
        if os.path.lexists(candidate):
            return candidate.read_bytes()
    raise AssertionError(f"{path} is in no layer of {ref}")


def test_pull_from_loopback_registry_over_plain_http(d: ImageDaemon, registry_images: RegistryImages,
                                                      test_images: LayoutImages) -> None:
    ref = registry_images.refs["busybox"]
    out = d.cli_ok("image", "pull", ref)
    want = registry_images.digests["busybox"]
    assert out.startswith(f"pulled {ref} {want} (1 layers,"), out

    listed = {i["ref"]: i for i in d.cli_json("image", "ls")}
    assert listed[ref]["digest"] == want
    image = test_images.images["busybox"]
    assert listed[ref]["size"] == sum(len(la.blob) for la in image.layers)
    assert listed[ref]["created_at_ns"] > 0

    inspected = d.cli_json("image", "inspect", ref)
    assert [la["digest"] for la in inspected["layers"]] == [la.digest for la in image.layers]
    assert inspected["config"]["config"]["Cmd"] == ["/bin/sh"]
    assert inspected["config"]["rootfs"]["diff_ids"] == [la.diff_id for la in image.layers]
    # the blobs capsa keeps are exactly the registry's: manifest, config, layer
    assert {want.removeprefix("sha256:"), image.layers[0].digest.hex} <= blob_hexes(d.home)
    top = chain_dirs(d, ref)[-1]
    for path, content in image.expect_files.items():
        assert (top / path).read_bytes() == content
    for path, target in image.expect_symlinks.items():
        assert os.readlink(top / path) == target
    assert ingest_leftovers(d.home) == []


def test_pull_of_a_multi_platform_index_takes_linux_amd64(d: ImageDaemon, registry_images: RegistryImages,
                                                          test_images: LayoutImages) -> None:
    ref = registry_images.refs["multi"]
    d.cli_ok("image", "pull", ref)
    inspected = d.cli_json("image", "inspect", ref)
    assert inspected["digest"] == test_images.images["busybox"].manifest_digest  # the amd64 member, not the index
    assert inspected["digest"] != registry_images.digests["multi"]


def test_image_history_shows_the_durable_pull_run(d: ImageDaemon, registry_images: RegistryImages) -> None:
    ref = registry_images.refs["busybox"]
    d.cli_ok("image", "pull", ref)  # again: already there, hands off without work
    runs = d.cli_json("image", "history", ref)
    assert [r["machine"] for r in runs] == ["image.pull", "image.pull"]
    newest, first = runs
    first_done = [e["transition"] for e in first["events"] if e["kind"] == "transition_complete"]
    assert first["state"] == "succeeded" and first_done == ["resolve", "fetch", "unpack", "register"]
    assert newest["state"] == "handed_off"
    assert [e["kind"] for e in newest["events"]][-2:] == ["handoff", "finish"]
    table = d.cli_ok("image", "history", ref, "--events")
    assert "image.pull" in table and "transition_complete" in table and "handed_off" in table


def test_pull_layered_s3_prefix(d: ImageDaemon, s3_images: S3Images, test_images: LayoutImages) -> None:
    ref = s3_images.refs["whiteout"]
    out = d.cli_ok("image", "pull", ref)
    assert out.startswith(f"pulled {ref} sha256:") and "(3 layers," in out
    inspected = d.cli_json("image", "inspect", ref)
    assert [la["digest"] for la in inspected["layers"]] == [sha(t) for t in s3_images.layers["whiteout"]]
    image = test_images.images["whiteout"]
    for path, content in image.expect_files.items():
        assert merged_file(d, ref, path) == content


def test_pull_s3_prefix_orders_layers_numerically(d: ImageDaemon, moto_server: MotoServer, s3_bucket: str) -> None:
    client = moto_server.client()
    tars = {n: TarBuilder().file("order", f"{n}\n").file(f"layer-{n}", b"x").build() for n in range(1, 12)}
    for n, tar in tars.items():
        client.put_object(Bucket=s3_bucket, Key=f"images/numbered/{n}.tar", Body=tar)
    client.put_object(Bucket=s3_bucket, Key="images/numbered/README", Body=b"not a layer")
    client.put_object(Bucket=s3_bucket, Key="images/numbered/deeper/1.tar", Body=tars[1])
    ref = f"s3://{s3_bucket}/images/numbered/"
    d.cli_ok("image", "pull", ref)
    inspected = d.cli_json("image", "inspect", ref)
    assert [la["digest"] for la in inspected["layers"]] == [sha(tars[n]) for n in range(1, 12)]  # 1..11, not 1,10,11,2
    assert merged_file(d, ref, "order") == b"11\n"


def test_pull_single_s3_object(d: ImageDaemon, s3_images: S3Images) -> None:
    out = d.cli_ok("image", "pull", s3_images.single)
    assert "(1 layers," in out
    inspected = d.cli_json("image", "inspect", s3_images.single)
    assert [la["digest"] for la in inspected["layers"]] == [sha(s3_images.layers["busybox"][0])]
    assert os.readlink(chain_dirs(d, s3_images.single)[0] / "bin/sh") == "busybox"


def test_pull_wrong_expected_digest_for_an_s3_object_is_a_checksum_mismatch(d: ImageDaemon,
                                                                           s3_images: S3Images) -> None:
    wrong = "sha256:" + "0" * 64
    ref = s3_images.single.replace("rootfs.tar", "rootfs-copy.tar")
    s3_images.server.client().copy_object(Bucket=s3_images.bucket, Key="exports/rootfs-copy.tar",
                                          CopySource={"Bucket": s3_images.bucket, "Key": "exports/rootfs.tar"})
    res = d.cli("image", "pull", ref, "--expected-digest", wrong)
    assert res.returncode == 10, res.stderr.decode()
    assert wrong in one_line_error(res)
    assert ingest_leftovers(d.home) == []


def test_pull_oci_layout(d: ImageDaemon, test_images: LayoutImages) -> None:
    ref = test_images.ref("whiteout")
    out = d.cli_ok("image", "pull", ref)
    assert out.startswith(f"pulled {ref} {test_images.digests['whiteout']} (3 layers,"), out
    image = test_images.images["whiteout"]
    for path, content in image.expect_files.items():
        assert merged_file(d, ref, path) == content


def test_pull_docker_archive(d: ImageDaemon, test_images: LayoutImages, tmp_path: Path) -> None:
    image = test_images.images["whiteout"]
    archive = write_docker_archive(tmp_path / "saved.tar", {"capsa/whiteout:1": image})
    ref = f"docker-archive:{archive}"
    out = d.cli_ok("image", "pull", ref)
    assert "(3 layers," in out
    inspected = d.cli_json("image", "inspect", ref)
    assert [la["digest"] for la in inspected["layers"]] == [la.diff_id for la in image.layers]  # saved uncompressed
    assert inspected["config"]["config"]["Entrypoint"] == ["/bin/cat"]
    for path, content in image.expect_files.items():
        assert merged_file(d, ref, path) == content


def test_reader_cannot_pull_maintainer_can(d: ImageDaemon, test_images: LayoutImages) -> None:
    ref = test_images.ref("busybox")
    d.cli("image", "rm", ref)  # whatever an earlier test left
    res = d.cli("image", "pull", ref, role="reader")
    assert res.returncode == 6
    assert "may not call PullImage" in one_line_error(res)
    assert ref not in {i["ref"] for i in d.cli_json("image", "ls", role="reader")}  # reader may list
    d.cli_ok("image", "pull", ref, role="maintainer")
    assert ref in {i["ref"] for i in d.cli_json("image", "ls", role="reader")}
    res = d.cli("image", "rm", ref, role="reader")
    assert res.returncode == 6
    d.cli_ok("image", "rm", ref, role="maintainer")


def test_pull_of_a_missing_tag_fails_clearly(d: ImageDaemon, registry_images: RegistryImages) -> None:
    ref = registry_images.refs["busybox"].replace(":1", ":no-such-tag")
    res = d.cli("image", "pull", ref)
    assert res.returncode == 3
    assert "no-such-tag" in one_line_error(res)


def test_s3_layers_shared_between_families_are_downloaded_once(d: ImageDaemon, s3_images: S3Images) -> None:
    d.cli_ok("image", "pull", s3_images.refs["whiteout"])  # its layer 1 is busybox's layer 1 (same ETag, size)
    d.cli_ok("image", "pull", s3_images.refs["busybox"])
    fetches = query(d.home, "SELECT state, resource_id FROM fsm_runs WHERE machine = 'blob.fetch'"
                            " AND resource_id LIKE ?", (f"source:s3://{s3_images.bucket}/images/busybox/1.tar%",))
    assert [f["state"] for f in fetches] == ["handed_off"]  # known by its ETag before any byte was fetched
    layers = [d.cli_json("image", "inspect", s3_images.refs[f])["layers"][0]["digest"] for f in ("busybox", "whiteout")]
    assert layers[0] == layers[1]


def test_run_a_job_in_an_s3_image(d: ImageDaemon, s3_images: S3Images) -> None:
    res = d.cli("run", "--image", s3_images.refs["whiteout"], "--", "/bin/cat", "/etc/hello.txt", "/data/keep.txt")
    assert (res.returncode, res.stdout) == (0, b"hello from layer 3\nkeep\n"), res.stderr.decode()
