"""`capsa image tag/push/save/load` against a real daemon, the real Debian docker-registry, skopeo and umoci.

What capsa claims is checked from outside: the registry's own answers (manifest digests, blob bytes),
the archive's members as tarfile reads them, and what skopeo and umoci make of the archive.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from image_helpers import ImageDaemon, image_daemon

from tests.fixtures.images import LayoutImages, RegistryImages, _registry_digest
from tests.fixtures.servers import RegistryServer, _start, _stop


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageDaemon]:
    with image_daemon(tmp_path_factory.mktemp("img-transfer") / "home") as daemon:
        yield daemon


@pytest.fixture(scope="module")
def pulled(d: ImageDaemon, registry_images: RegistryImages) -> str:
    ref = registry_images.refs["busybox"]
    d.cli_ok("image", "pull", ref)
    return ref


def fails(d: ImageDaemon, *args: str, code: int, role: str = "admin") -> str:
    res = d.cli(*args, role=role, timeout=120)
    err = res.stderr.decode()
    assert res.returncode == code, f"capsa {' '.join(args)} exited {res.returncode}, wanted {code}: {err}"
    assert err.startswith("capsa: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def registry_blob(server: RegistryServer, repo: str, digest: str) -> bytes:
    with urllib.request.urlopen(f"{server.url}/v2/{repo}/blobs/{digest}", timeout=10) as resp:
        return bytes(resp.read())


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install {name})")
    return path


# -- tag ----------------------------------------------------------------------------------------------------
def test_tag_names_the_same_image_and_bad_names_fail(d: ImageDaemon, pulled: str) -> None:
    original = d.cli_json("image", "inspect", pulled)
    tagged = d.cli_json("image", "tag", pulled, "example.test/team/app:2")
    assert tagged["ref"] == "example.test/team/app:2"
    assert tagged["digest"] == original["digest"] and tagged["layers"] == original["layers"]
    assert set(tagged) >= {"ref", "digest", "size", "layers", "config", "source", "created_at_ns"}
    listed = {i["ref"]: i["digest"] for i in d.cli_json("image", "ls")}
    assert listed[pulled] == listed["example.test/team/app:2"]
    assert d.cli_ok("image", "tag", pulled, "example.test/team/app:3") == \
        f"tagged example.test/team/app:3 {original['digest']}\n"
    assert "no such image" in fails(d, "image", "tag", "example.test/none:1", "example.test/x:1", code=3)
    assert "@digest" in fails(d, "image", "tag", pulled, f"example.test/x@{original['digest']}", code=2)
    fails(d, "image", "tag", pulled, "example.test/x:1", code=6, role="developer")


# -- push ---------------------------------------------------------------------------------------------------
def test_push_mounts_from_the_source_repository_then_finds_everything_there(
        d: ImageDaemon, pulled: str, registry_images: RegistryImages, test_images: LayoutImages) -> None:
    server = registry_images.server
    dest = server.ref("pushed/busybox:7")
    out = d.cli_json("image", "push", pulled, dest)
    image = test_images.images["busybox"]
    layer = image.layers[0]
    states = {b["digest"]: b["state"] for b in out["blobs"]}
    assert states[layer.digest] == "mounted"          # capsa pulled it from capsa-test/busybox on this registry
    assert set(states.values()) <= {"mounted", "pushed"} and len(states) == 2
    assert out["destination"] == dest
    assert out["digest"] == registry_images.digests["busybox"]   # the manifest travelled byte for byte
    assert _registry_digest(server, "pushed/busybox", "7") == out["digest"]
    assert registry_blob(server, "pushed/busybox", layer.digest) == layer.blob

    again = d.cli_json("image", "push", pulled, dest)
    assert {b["state"] for b in again["blobs"]} == {"exists"}      # HEAD first: nothing is sent twice
    assert again["digest"] == out["digest"]
    line = d.cli_ok("image", "push", pulled, dest)
    assert line.startswith(f"pushed {dest} {out['digest']} (0 blobs uploaded") and "2 already there" in line


def test_push_of_an_image_under_a_new_name_uploads_to_a_fresh_repository(
        d: ImageDaemon, registry_images: RegistryImages, test_images: LayoutImages) -> None:
    d.cli_ok("image", "pull", test_images.ref("whiteout"))   # from an OCI layout, not from this registry
    server = registry_images.server
    dest = server.ref("fresh/whiteout:1")
    out = d.cli_json("image", "push", test_images.ref("whiteout"), dest)
    image = test_images.images["whiteout"]
    # Only a layer it shares with the busybox image pulled from this registry can be mounted.
    shared = {la.digest for la in test_images.images["busybox"].layers}
    assert {b["digest"]: b["state"] for b in out["blobs"]} == {
        b["digest"]: "mounted" if b["digest"] in shared else "pushed" for b in out["blobs"]}
    assert "pushed" in {b["state"] for b in out["blobs"]}
    assert out["digest"] == str(image.manifest_digest)
    for layer in image.layers:
        assert registry_blob(server, "fresh/whiteout", layer.digest) == layer.blob
    # skopeo reads it back from the registry as the same image
    inspected = json.loads(subprocess.run(
        [tool("skopeo"), "inspect", "--tls-verify=false", f"docker://{dest}"],
        check=True, capture_output=True, text=True, timeout=60).stdout)
    assert inspected["Digest"] == out["digest"] and inspected["Layers"] == [la.digest for la in image.layers]


@pytest.fixture(scope="module")
def readonly_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = tool("docker-registry")
    root = tmp_path_factory.mktemp("ro-registry")

    def argv(port: int) -> list[str]:
        config = {"version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
                  "storage": {"filesystem": {"rootdirectory": str(root / "storage")},
                              "maintenance": {"readonly": {"enabled": True}, "uploadpurging": {"enabled": False}}},
                  "http": {"addr": f"127.0.0.1:{port}"}}
        (root / "config.yml").write_text(yaml.safe_dump(config))
        return [binary, "serve", str(root / "config.yml")]

    proc, port = _start(argv, "/v2/", root / "registry.log")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc)


def test_push_errors_are_one_line_with_their_exit_code(d: ImageDaemon, pulled: str, readonly_registry: str) -> None:
    err = fails(d, "image", "push", pulled, f"{readonly_registry}/team/app:1", code=8)   # the registry refuses
    assert readonly_registry in err
    fails(d, "image", "push", "example.test/none:1", f"{readonly_registry}/x:1", code=3)     # unknown image
    fails(d, "image", "push", pulled, "oci:/tmp/somewhere", code=2)                        # not a registry
    fails(d, "image", "push", pulled, "127.0.0.1:1/x:1", code=7)                            # nobody listening


# -- save and load --------------------------------------------------------------------------------------
def members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_save_writes_an_oci_layout_that_skopeo_and_umoci_read(d: ImageDaemon, pulled: str, tmp_path: Path,
                                                             registry_images: RegistryImages,
                                                             test_images: LayoutImages) -> None:
    archive = tmp_path / "busybox.tar"
    out = d.cli_json("image", "save", pulled, "-o", str(archive))
    assert out == {"file": str(archive), "bytes": archive.stat().st_size, "images": [pulled]}
    assert not (tmp_path / "busybox.tar.part").exists()
    found = members(archive)
    digest = registry_images.digests["busybox"]
    layer = test_images.images["busybox"].layers[0]
    assert {"oci-layout", "index.json", f"blobs/sha256/{digest[7:]}", f"blobs/sha256/{layer.digest[7:]}"} <= set(found)
    assert all(m.isreg() or m.isdir() for m in found.values())
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        assert hashlib.sha256(tar.extractfile(f"blobs/sha256/{layer.digest[7:]}").read()).hexdigest() \
            == layer.digest[7:]  # type: ignore[union-attr]
    assert index["manifests"][0]["digest"] == digest
    assert index["manifests"][0]["annotations"] == {"io.containerd.image.name": pulled,
                                                    "org.opencontainers.image.ref.name": "1"}

    inspected = json.loads(subprocess.run([tool("skopeo"), "inspect", f"oci-archive:{archive}"], check=True,
                                          capture_output=True, text=True, timeout=60).stdout)
    assert inspected["Digest"] == digest and inspected["Layers"] == [layer.digest]

    layout = tmp_path / "layout"
    with tarfile.open(archive) as tar:
        tar.extractall(layout, filter="data")
    bundle = tmp_path / "bundle"
    subprocess.run([tool("umoci"), "unpack", "--image", f"{layout}:1", str(bundle)], check=True,
                   capture_output=True, timeout=120)
    for path, content in test_images.images["busybox"].expect_files.items():
        assert (bundle / "rootfs" / path).read_bytes() == content


def test_load_gives_back_what_save_wrote(d: ImageDaemon, registry_images: RegistryImages, tmp_path: Path) -> None:
    ref = registry_images.refs["whiteout"]
    d.cli_ok("image", "pull", ref)
    archive = tmp_path / "w.tar"
    d.cli_ok("image", "save", ref, "-o", str(archive))
    d.cli_ok("image", "rm", ref)
    loaded = d.cli_json("image", "load", "-i", str(archive))
    assert [(i["ref"], i["digest"]) for i in loaded] == [(ref, registry_images.digests["whiteout"])]
    assert {i["ref"] for i in d.cli_json("image", "ls")} >= {ref}
    assert not any(i["ref"].startswith(f"oci:{d.home}") for i in d.cli_json("image", "ls"))   # no scratch name
    assert list((d.home / "content" / "load").iterdir()) == []
    assert d.cli_ok("image", "load", "-i", str(archive)) == f"loaded {ref} {registry_images.digests['whiteout']}\n"
    # stdout and stdin work as well as files, and give the same bytes (a save is reproducible)
    piped = d.cli("image", "save", ref)
    assert piped.returncode == 0 and piped.stdout == archive.read_bytes()
    again = d.cli("image", "load", "-q", input=piped.stdout)
    assert again.returncode == 0 and again.stdout.decode() == f"{ref}\n"


def test_load_reads_what_skopeo_writes(d: ImageDaemon, test_images: LayoutImages, tmp_path: Path) -> None:
    skopeo = tool("skopeo")
    named, unnamed = tmp_path / "named.tar", tmp_path / "unnamed.tar"
    src = f"oci:{test_images.path}:busybox"
    subprocess.run([skopeo, "--insecure-policy", "copy", "--quiet", src, f"oci-archive:{named}:team/app:5"],
                   check=True, capture_output=True, timeout=120)
    subprocess.run([skopeo, "--insecure-policy", "copy", "--quiet", src, f"oci-archive:{unnamed}"],
                   check=True, capture_output=True, timeout=120)
    want = str(test_images.images["busybox"].manifest_digest)
    assert d.cli_json("image", "load", "-i", str(named))[0]["ref"] == "docker.io/team/app:5"
    assert "--tag" in fails(d, "image", "load", "-i", str(unnamed), code=2)
    loaded = d.cli_json("image", "load", "-i", str(unnamed), "--tag", "example.test/unnamed:1")
    assert [(i["ref"], i["digest"]) for i in loaded] == [("example.test/unnamed:1", want)]


def _tar(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in entries:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def test_bad_archives_are_refused_with_their_exit_code(d: ImageDaemon, pulled: str, tmp_path: Path) -> None:
    good = tmp_path / "good.tar"
    d.cli_ok("image", "save", pulled, "-o", str(good))
    data = good.read_bytes()
    cases: dict[str, tuple[bytes, int, str]] = {}
    cases["junk"] = (b"this is not a tar archive" * 100, 2, "tar")
    cases["truncated"] = (data[: len(data) // 2], 2, "truncated")
    link = tarfile.TarInfo("blobs/sha256/" + "a" * 64)
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
    cases["symlink"] = (_tar([_file("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), (link, b"")]), 11, "symlink")
    cases["climbing"] = (_tar([_file("../../etc/cron.d/x", b"* * * * * root true\n")]), 11, "climbing")
    wrong = "sha256:" + "0" * 64
    cases["digest"] = (_tar([_file(f"blobs/sha256/{wrong[7:]}", b"not what the name says")]), 10, "digest mismatch")
    cases["docker save"] = (_tar([_file("manifest.json", b"[]")]), 2, "docker-archive:")
    for name, (payload, code, words) in cases.items():
        path = tmp_path / f"{name}.tar"
        path.write_bytes(payload)
        err = fails(d, "image", "load", "-i", str(path), code=code)
        assert words in err, (name, err)
    fails(d, "image", "save", "example.test/none:1", "-o", str(tmp_path / "x.tar"), code=3)
    assert not (tmp_path / "x.tar").exists() and not (tmp_path / "x.tar.part").exists()
    fails(d, "image", "save", pulled, "-o", str(tmp_path / "r.tar"), code=6, role="reader")


def _stderr_on_a_terminal(d: ImageDaemon, *args: str) -> str:
    import os
    import pty

    from tests.fixtures.daemon import CAPSA

    master, slave = pty.openpty()
    try:
        proc = subprocess.run([*CAPSA, "--config", str(d.home / "client-admin.yaml"), *args], env=d.env,
                              stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, timeout=120)
        assert proc.returncode == 0
        os.close(slave)
        slave = -1
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:   # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            out += chunk
        return out.decode(errors="replace")
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def test_progress_bars_only_on_a_terminal_and_never_with_json(d: ImageDaemon, pulled: str, tmp_path: Path) -> None:
    drawn = _stderr_on_a_terminal(d, "image", "save", pulled, "-o", str(tmp_path / "a.tar"))
    assert "saving" in drawn and "━" in drawn   # rich's bar, on the terminal
    assert _stderr_on_a_terminal(d, "image", "save", pulled, "-o", str(tmp_path / "b.tar"), "--json") == ""
    piped = d.cli("image", "save", pulled, "-o", str(tmp_path / "c.tar"))
    assert piped.stderr == b"" and (tmp_path / "a.tar").read_bytes() == (tmp_path / "c.tar").read_bytes()
