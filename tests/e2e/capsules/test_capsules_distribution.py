"""Push and pull through a real OCI registry (as an OCI artifact) and a real S3 endpoint (moto),
with the digest verified on pull: tampered bytes are refused and nothing is kept."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from capsule_helpers import create, make_tree

from capsa.capsules.distribution import CONFIG_MEDIA_TYPE, LAYER_MEDIA_TYPE
from capsa.errors import ChecksumMismatch, NotFound
from tests.fixtures.daemon import RunningDaemon, running_daemon
from tests.fixtures.servers import MotoServer, RegistryServer


@pytest.fixture(scope="module")
def dist_daemon(moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    """A daemon whose environment points S3 at moto (as an operator's AWS_* variables would)."""
    patch = pytest.MonkeyPatch()
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        patch.delenv(name)
    for name, value in moto_server.env.items():
        patch.setenv(name, value)
    try:
        daemon_cm = running_daemon(tmp_path_factory.mktemp("capsa") / "home")
        daemon = daemon_cm.__enter__()
    finally:
        patch.undo()
    try:
        yield daemon
    finally:
        daemon_cm.__exit__(None, None, None)


def _flip_middle_byte(path: Path) -> bytes:
    original = path.read_bytes()
    middle = len(original) // 2
    path.write_bytes(original[:middle] + bytes([original[middle] ^ 0x01]) + original[middle + 1:])
    return original


def test_registry_round_trip_as_an_oci_artifact(dist_daemon: RunningDaemon, registry_server: RegistryServer,
                                                tmp_path: Path) -> None:
    with dist_daemon.client() as client:
        create(client, "regbase@1.0.0", make_tree(tmp_path / "b", {"b.txt": "base"}))
        made = create(client, "regdata@1.2.0", make_tree(tmp_path / "d", {"d.txt": "registry data " * 200}),
                      deps=("regbase>=1",))
        pushed = client.push_capsule("regdata@1.2.0", registry_server.ref("capsules/regdata"))
        assert pushed.location == registry_server.ref("capsules/regdata:1.2.0") and pushed.digest == made.digest

        request = urllib.request.Request(f"{registry_server.url}/v2/capsules/regdata/manifests/1.2.0",
                                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            manifest = json.loads(resp.read())
        assert manifest["artifactType"] == manifest["config"]["mediaType"] == CONFIG_MEDIA_TYPE
        assert [(la["mediaType"], la["digest"]) for la in manifest["layers"]] == [(LAYER_MEDIA_TYPE, made.digest)]
        assert manifest["annotations"]["dev.capsa.capsule.version"] == "1.2.0"
        assert json.loads(manifest["annotations"]["dev.capsa.capsule.dependencies"]) == ["regbase>=1"]

        client.remove_capsule("regdata@1.2.0")
        pulled = client.pull_capsule(pushed.location)
        assert (pulled.name, pulled.version, pulled.digest) == ("regdata", "1.2.0", made.digest)
        assert list(pulled.dependencies) == ["regbase>=1"]
        assert client.pull_capsule(pushed.location).digest == made.digest   # again: a no-op

        hexdigest = made.digest.partition(":")[2]
        blob = registry_server.root / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"
        original = _flip_middle_byte(blob)
        try:
            client.remove_capsule("regdata@1.2.0")
            with pytest.raises(ChecksumMismatch, match=made.digest):
                client.pull_capsule(pushed.location)
            with pytest.raises(NotFound):
                client.inspect_capsule("regdata@1.2.0")
        finally:
            blob.write_bytes(original)


def test_s3_round_trip_with_the_cli(dist_daemon: RunningDaemon, moto_server: MotoServer, s3_bucket: str,
                                    tmp_path: Path) -> None:
    make_tree(tmp_path / "s", {"s.txt": "s3 data " * 100, "deep/er.txt": "deeper"})
    created = dist_daemon.cli("capsule", "create", "s3data@1.0.0", str(tmp_path / "s"), "--label", "team=ml",
                              "--json", check=True)
    digest = json.loads(created.stdout)["digest"]
    pushed = dist_daemon.cli("capsule", "push", "s3data@1.0.0", f"s3://{s3_bucket}/capsules/", "--json", check=True)
    location = json.loads(pushed.stdout)["location"]
    assert location == f"s3://{s3_bucket}/capsules/s3data/1.0.0/"
    s3 = moto_server.client()
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert keys == {"capsules/s3data/1.0.0/capsule.tar", "capsules/s3data/1.0.0/capsule.json"}
    description = json.loads(s3.get_object(Bucket=s3_bucket, Key="capsules/s3data/1.0.0/capsule.json")["Body"].read())
    assert (description["name"], description["version"], description["digest"]) == ("s3data", "1.0.0", digest)
    assert description["labels"] == {"team": "ml"}

    with dist_daemon.client() as client:
        client.remove_capsule("s3data@1.0.0")
    pulled = dist_daemon.cli("capsule", "pull", location, "--json", check=True)
    assert json.loads(pulled.stdout)["digest"] == digest

    tar = s3.get_object(Bucket=s3_bucket, Key="capsules/s3data/1.0.0/capsule.tar")["Body"].read()
    middle = len(tar) // 2
    tampered = tar[:middle] + bytes([tar[middle] ^ 0x01]) + tar[middle + 1:]
    s3.put_object(Bucket=s3_bucket, Key="capsules/s3data/1.0.0/capsule.tar", Body=tampered)
    with dist_daemon.client() as client:
        client.remove_capsule("s3data@1.0.0")
        refused = dist_daemon.cli("capsule", "pull", location)
        assert refused.returncode == ChecksumMismatch.exit_code, refused.stderr.decode()
        assert digest in refused.stderr.decode()
        with pytest.raises(NotFound):
            client.inspect_capsule("s3data@1.0.0")
