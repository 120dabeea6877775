"""`capsa run --image`: the job's root is a writable snapshot of the image and nothing of the host.

Also removal and pruning while jobs use images: `image rm` never stops a job
and refuses while one runs; `image prune -f` leaves exactly what images and
jobs still reference.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_helpers import (
    PATH_ENV,
    ImageDaemon,
    blob_hexes,
    expected_tree,
    image_daemon,
    image_with,
    ingest_leftovers,
    layer_dir,
    one_line_error,
    push_image,
    query,
    snapshot_dirs,
    snapshot_keys,
    snapshot_rows,
)

from tests.fixtures.images import (
    Layer,
    RegistryImages,
    TarBuilder,
    busybox_layer,
    whiteout_image,
    write_oci_layout,
)
from tests.fixtures.servers import RegistryServer
from tests.fixtures.waiting import wait_for

CONFIG_CMD = 'echo "$GREETING" from $(pwd) as $(id -u):$(id -g)'


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageDaemon]:
    with image_daemon(tmp_path_factory.mktemp("img-run") / "home") as daemon:
        yield daemon


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images of this module: the whiteout image's layers without its Entrypoint, and one with a full config."""
    root = tmp_path_factory.mktemp("img-run-layout") / "layout"
    wo = whiteout_image()
    app = TarBuilder().dir("srv").dir("srv/app", 0o777).file("srv/app/data.txt", "app data\n").build()
    images = {
        "whiteout": wo,
        "findable": image_with(wo.layers, {"Cmd": ["/bin/sh"], "Env": [PATH_ENV]}),
        "configured": image_with(
            [Layer(busybox_layer()), Layer(app, "none")],
            {"Entrypoint": ["/bin/sh", "-c"], "Cmd": [CONFIG_CMD], "Env": [PATH_ENV, "GREETING=hello-from-image"],
             "WorkingDir": "/srv/app", "User": "1000:1000"}),
    }
    for tag in ("in-use", "prunable"):  # each with a layer of its own, so removal is observable on disk
        own = TarBuilder().file(f"{tag}.txt", tag).build()
        images[tag] = image_with([Layer(busybox_layer()), Layer(own, "gzip")], {"Cmd": ["/bin/sh"], "Env": [PATH_ENV]})
    write_oci_layout(root, images)
    return root


def ref(layout: Path, tag: str) -> str:
    return f"oci:{layout}:{tag}"


def run(d: ImageDaemon, *args: str) -> tuple[int, str, str]:
    res = d.cli("run", *args)
    return res.returncode, res.stdout.decode(), res.stderr.decode()


def test_job_sees_the_image_and_nothing_of_the_host(d: ImageDaemon, registry_images: RegistryImages) -> None:
    assert os.path.exists("/usr/bin/python3")  # the host has it: its absence below means something
    code, out, err = run(d, "--image", registry_images.refs["busybox"], "--", "sh", "-c",
                         "test -e /usr/bin/python3; echo python=$?; echo env=$CAPSA_TEST; cat /etc/passwd; ls /")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "python=1"
    assert lines[1] == "env=busybox"  # the image's Env
    assert lines[2:4] == ["root:x:0:0:root:/root:/bin/sh", "nobody:x:65534:65534:nobody:/:/bin/false"]
    listing = set(lines[4:])
    assert {"bin", "etc", "root", "tmp", "proc", "sys", "dev"} <= listing
    assert not listing & {"usr", "lib", "lib64", "home", "var", "opt"}  # no host directory at all


def test_writes_go_to_the_jobs_own_snapshot(d: ImageDaemon, registry_images: RegistryImages) -> None:
    image = registry_images.refs["busybox"]
    code, _, err = run(d, "--image", image, "--", "sh", "-c",
                       "echo mine > /etc/marker && rm /etc/group && echo extra >> /etc/passwd && rm /bin/ls")
    assert code == 0, err
    code, out, err = run(d, "--image", image, "--", "sh", "-c",
                         "test ! -e /etc/marker && test -e /etc/group && test -e /bin/ls && cat /etc/passwd")
    assert code == 0, err
    assert "extra" not in out
    chain = json.loads(query(d.home, "SELECT chain_json FROM images WHERE ref = ?", (image,))[0]["chain_json"])
    base = layer_dir(d.home, chain[-1])
    assert (base / "etc/group").exists() and not (base / "etc/marker").exists()
    assert b"extra" not in (base / "etc/passwd").read_bytes()


def test_entrypoint_cmd_env_workdir_and_user_are_honoured(d: ImageDaemon, layout: Path) -> None:
    image = ref(layout, "configured")
    code, out, err = run(d, "--image", image)
    assert (code, out) == (0, "hello-from-image from /srv/app as 1000:1000\n"), err
    # a command replaces Cmd, the Entrypoint (sh -c) stays
    code, out, err = run(d, "--image", image, "--", "cat data.txt; echo $GREETING")
    assert (code, out) == (0, "app data\nhello-from-image\n"), err
    # flags override the image's Env, WorkingDir and User
    code, out, err = run(d, "--image", image, "-e", "GREETING=flag", "--workdir", "/srv", "-u", "0:0", "--")
    assert (code, out) == (0, "flag from /srv as 0:0\n"), err


def test_whiteout_entrypoint_and_workdir(d: ImageDaemon, layout: Path) -> None:
    image = ref(layout, "whiteout")  # Entrypoint cat, Cmd /added.txt, WorkingDir /data
    assert run(d, "--image", image)[:2] == (0, "added in layer 3\n")
    assert run(d, "--image", image, "--", "keep.txt")[:2] == (0, "keep\n")


def test_multi_layer_whiteouts_and_opaque_dir_show_the_exact_layout(d: ImageDaemon, layout: Path) -> None:
    wo = whiteout_image()
    code, out, err = run(d, "--image", ref(layout, "findable"), "--", "sh", "-c",
                         "busybox find / -xdev; echo ---; cat /proc/self/mountinfo; echo ---;"
                         " cat /etc/hello.txt /data/keep.txt /opaque/new.txt /added.txt")
    assert code == 0, err
    found_text, mountinfo, contents = out.split("---\n")
    found = {p for p in found_text.splitlines() if p != "/"}
    mountpoints = {line.split()[4] for line in mountinfo.splitlines()}
    expected = expected_tree([la.tar for la in wo.layers])
    assert expected.keys() - found == set()
    extra = found - expected.keys()
    assert extra <= mountpoints, f"not in the image and not a mount point: {sorted(extra - mountpoints)}"
    for gone in wo.expect_absent:
        assert "/" + gone not in found
    assert contents == "hello from layer 3\nkeep\nnew\nadded in layer 3\n"


def test_pull_never_on_a_missing_image_fails_clearly(d: ImageDaemon, layout: Path) -> None:
    image = ref(layout, "configured").replace(":configured", ":never-pulled")
    before = len(d.cli_json("ps", "-a"))
    res = d.cli("run", "--pull", "never", "--image", image, "--", "true")
    assert res.returncode == 3
    err = one_line_error(res)
    assert image in err and "--pull=never" in err
    assert len(d.cli_json("ps", "-a")) == before  # no job was created


def test_pull_always_re_resolves_a_moved_tag(d: ImageDaemon, registry_server: RegistryServer,
                                             tmp_path: Path) -> None:
    def version_image(text: str) -> object:
        return image_with([Layer(busybox_layer()), Layer(TarBuilder().file("version", text).build(), "gzip")],
                          {"Cmd": ["cat", "/version"], "Env": [PATH_ENV]})

    target = registry_server.ref("capsa-e2e/moving:1")
    first = push_image(tmp_path, version_image("A\n"), registry_server, "capsa-e2e/moving:1")  # type: ignore[arg-type]
    assert run(d, "--image", target)[:2] == (0, "A\n")
    second = push_image(tmp_path, version_image("B\n"), registry_server, "capsa-e2e/moving:1")  # type: ignore[arg-type]
    assert run(d, "--image", target)[:2] == (0, "A\n")  # --pull missing: the local image is used
    assert run(d, "--pull", "always", "--image", target)[:2] == (0, "B\n")
    assert d.cli_json("image", "inspect", target)["digest"] == second != first
    states = [r["state"] for r in d.cli_json("image", "history", target)]
    assert states == ["succeeded", "succeeded"]


def test_image_rm_refuses_while_a_job_runs_and_works_once_it_is_removed(d: ImageDaemon, layout: Path) -> None:
    image = ref(layout, "in-use")
    job_id = d.cli_ok("run", "-d", "--image", image, "--", "sleep", "600").strip()
    with d.client() as client:
        wait_for(lambda: client.get_job(job_id).state == "RUNNING", 30.0, what="the job to run")
        for flags in ((), ("-f",)):
            res = d.cli("image", "rm", *flags, image)
            assert res.returncode == 4, res.stderr.decode()
            assert job_id[:12] in one_line_error(res) and "running" in res.stderr.decode()
            assert client.get_job(job_id).state == "RUNNING"  # -f stops nothing
        assert d.cli_json("image", "inspect", image)["in_use_by"] == [job_id]
        d.cli_ok("stop", "-t", "1", job_id)
        res = d.cli("image", "rm", image)
        assert res.returncode == 4 and "ended job" in one_line_error(res)
    chain = json.loads(query(d.home, "SELECT chain_json FROM images WHERE ref = ?", (image,))[0]["chain_json"])
    assert f"job-{job_id}" in snapshot_keys(d.home)
    d.cli_ok("rm", job_id)
    assert d.cli_ok("image", "rm", image) == f"removed {image}\n"
    keys = snapshot_keys(d.home)
    assert f"job-{job_id}" not in keys and chain[-1] not in keys  # its own layer went with it
    assert image not in {i["ref"] for i in d.cli_json("image", "ls")}


def test_image_rm_force_releases_ended_jobs(d: ImageDaemon, layout: Path) -> None:
    image = ref(layout, "in-use")
    assert run(d, "--image", image, "--", "true")[0] == 0
    digest = d.cli_json("image", "inspect", image)["digest"]
    users = [r["snapshot"] for r in query(d.home, "SELECT snapshot FROM image_users WHERE digest = ?", (digest,))]
    assert users and set(users) <= snapshot_keys(d.home)
    res = d.cli("image", "rm", image)
    assert res.returncode == 4 and "--force" in one_line_error(res)
    d.cli_ok("image", "rm", "-f", image)
    assert snapshot_keys(d.home).isdisjoint(users)
    assert query(d.home, "SELECT 1 FROM image_users WHERE digest = ?", (digest,)) == []


def test_image_of_a_job_that_failed_to_start_can_be_removed(d: ImageDaemon, layout: Path) -> None:
    image = ref(layout, "in-use")
    code, _, err = run(d, "--image", image, "--", "/no/such/command")
    assert code == 127, err
    res = d.cli("image", "rm", "-f", image)
    # the job never ran: nothing is "running" on this image
    assert res.returncode == 0, res.stderr.decode()


def _referenced(d: ImageDaemon) -> tuple[set[str], set[str]]:
    """(blob hexes, snapshot keys) that images and jobs still reference, from capsa.db and the manifests."""
    blobs: set[str] = set()
    snaps: set[str] = set()
    for row in query(d.home, "SELECT digest, layers_json, chain_json FROM images"):
        blobs.add(row["digest"].removeprefix("sha256:"))
        blobs.update(la["digest"].removeprefix("sha256:") for la in json.loads(row["layers_json"]))
        snaps.update(json.loads(row["chain_json"]))
        manifest = d.home / "content" / "blobs" / "sha256" / row["digest"].removeprefix("sha256:")
        if manifest.exists():
            config = json.loads(manifest.read_bytes()).get("config", {}).get("digest")
            if config:
                blobs.add(config.removeprefix("sha256:"))
    snaps.update(r["snapshot"] for r in query(d.home, "SELECT snapshot FROM image_users"))
    return blobs, snaps


def test_prune_frees_exactly_what_nothing_references(d: ImageDaemon, layout: Path, tmp_path: Path) -> None:
    removed = ref(layout, "prunable")
    d.cli_ok("image", "pull", removed)
    d.cli_ok("image", "rm", removed)  # its blobs stay until a prune
    # a tag that moved: the old image's own layer snapshot is referenced by nothing any more
    moving = tmp_path / "moving"
    for text in ("old", "new"):
        own = Layer(TarBuilder().file("which", text).build(), "gzip")
        write_oci_layout(moving, {"t": image_with([Layer(busybox_layer()), own], {"Cmd": ["cat", "/which"]})})
        d.cli_ok("image", "pull", f"oci:{moving}:t")
    # an ingest a crashed download left behind
    leftover = d.home / "content" / "ingest" / hashlib.sha256(b"blob:sha256:" + b"ab" * 32).hexdigest()
    leftover.mkdir()
    (leftover / "data").write_bytes(b"x" * 12345)
    (leftover / "meta.json").write_text(json.dumps({"ref": "blob:sha256:" + "ab" * 32, "expected": None,
                                                    "expected_size": None, "started": 0}))
    keep_blobs, keep_snaps = _referenced(d)
    blob_dir = d.home / "content" / "blobs" / "sha256"
    doomed_blobs = {h: (blob_dir / h).stat().st_size for h in blob_hexes(d.home) - keep_blobs}
    rows = snapshot_rows(d.home)
    kept_ids = {r["id"] for r in rows if r["key"] in keep_snaps}
    # a snapshot stays if kept or an ancestor of a kept one
    by_id = {r["id"]: r for r in rows}
    for sid in list(kept_ids):
        while by_id[sid]["parent_id"] is not None:
            sid = by_id[sid]["parent_id"]
            kept_ids.add(sid)
    doomed_snaps = {r["key"]: r["size"] or 0 for r in rows if r["id"] not in kept_ids}
    assert doomed_blobs and doomed_snaps, "the removed image must have left something to prune"

    out = d.cli_ok("image", "prune", "-f")
    freed = int(out.splitlines()[-1].split()[1])
    assert freed == sum(doomed_blobs.values()) + sum(doomed_snaps.values()) + 12345, out
    assert {f"blob sha256:{h}" for h in doomed_blobs} <= set(out.splitlines())
    assert blob_hexes(d.home) == blob_hexes(d.home) & keep_blobs
    assert set(doomed_blobs).isdisjoint(blob_hexes(d.home))
    assert snapshot_keys(d.home).isdisjoint(doomed_snaps)
    assert ingest_leftovers(d.home) == []
    assert all(name.isdigit() for name in snapshot_dirs(d.home))  # no trash or half-made snapshot dirs
    assert len(snapshot_dirs(d.home)) == len(snapshot_rows(d.home))
    # every image still runs
    assert run(d, "--image", ref(layout, "configured"))[0] == 0
    again = d.cli_ok("image", "prune", "-f")
    assert again.splitlines()[-1].startswith("freed 0 bytes")
