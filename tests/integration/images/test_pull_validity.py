"""Validity before reuse (image ADR-006), the pipelined pull, verify, and refusal logging.

Real parts: Engine on SQLite, the overlay snapshotter with kernel mounts, an OCI layout source.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from capsa.errors import FailedPrecondition, UnsafeArchive
from capsa.fsm import Engine, RetryPolicy
from capsa.images.content import ContentStore
from capsa.images.pull import FETCH, PULL, UNPACK, PullContext
from capsa.images.service import ImageService
from capsa.images.sources import RegistryConfig, S3Config
from capsa.images.store import ImageStore
from capsa.images.unpack import UnpackLimits
from capsa.images.validity import BlobPolicy
from capsa.snapshots import open_snapshotter
from capsa.snapshots.mount import mount_all, unmount
from capsa.state.db import Database
from tests.fixtures.images import Layer, TarBuilder, TestImage, whiteout_image, write_oci_layout

FAST = RetryPolicy(base_s=0.01, cap_s=0.05, max_attempts=3)


@dataclass
class Home:
    root: Path
    db: Database
    engine: Engine
    pc: PullContext
    service: ImageService

    def layer_dir(self, key: str) -> Path:
        sn = self.pc.snapshotter
        return sn._fs(sn._store.require(key).id)  # type: ignore[attr-defined]

    def events(self, machine: str, kind: str) -> list[str]:
        out: list[str] = []
        for run in self.engine.history(machine=machine, limit=100):
            out += [e.message or "" for e in self.engine.events(run.run_id) if e.kind == kind]
        return out


def _home(root: Path, **kwargs: object) -> Home:
    root.mkdir(parents=True, exist_ok=True)
    db = Database(root / "capsa.db")
    engine = Engine(db, retry=FAST)
    sn = open_snapshotter("overlay", root / "snapshots" / "overlay", db)
    pc = PullContext(content=ContentStore(root / "content", db), images=ImageStore(db), snapshotter=sn,
                     registry=RegistryConfig(), s3=S3Config(), limits=UnpackLimits(), **kwargs)  # type: ignore[arg-type]
    return Home(root, db, engine, pc, ImageService(engine, pc))


@pytest.fixture
def homes(tmp_path: Path) -> Iterator[list[Home]]:
    made: list[Home] = []
    yield made
    for home in made:
        home.engine.shutdown(timeout=10)
        home.pc.snapshotter.close()
        home.db.close()


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from capsa.images.oci import ImageConfig

    rooted = TarBuilder().dir(".", 0o750).dir("a").file("a/one", "1\n").build()  # sets its root's mode
    plain = TarBuilder().dir("b").file("b/two", "2\n").build()  # does not: inherits the parent's
    hostile = TarBuilder().dir("x").symlink("x/up", "../../../etc").build()
    cfg = ImageConfig.model_validate({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]}})
    images = {
        "whiteout": whiteout_image(),
        "rooted": TestImage(name="rooted", layers=(Layer(rooted, "gzip"), Layer(plain, "zstd"),
                                                   Layer(TarBuilder().file("c", "3\n").build(), "none")), config=cfg),
        "hostile": TestImage(name="hostile", layers=(Layer(plain, "gzip"), Layer(hostile, "none")), config=cfg),
    }
    root = tmp_path_factory.mktemp("validity") / "layout"
    write_oci_layout(root, images)
    return {tag: f"oci:{root}:{tag}" for tag in images}


def _tree(path: Path) -> dict[str, tuple[object, ...]]:
    """Everything a job could observe of one layer directory, its root's metadata included."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in ["", *dirnames, *filenames] if dirpath == str(path) else [*dirnames, *filenames]:
            full = Path(dirpath) / name
            st = full.lstat()
            body: object = None
            if stat.S_ISREG(st.st_mode):
                body = hashlib.sha256(full.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(full)
            xattrs = tuple(sorted((k, os.getxattr(full, k, follow_symlinks=False))
                                  for k in os.listxattr(full, follow_symlinks=False)))
            out[str(full.relative_to(path))] = (st.st_mode, st.st_uid, st.st_gid, body, xattrs)
    return out


def test_pipelined_and_sequential_pulls_build_identical_layers(homes: list[Home], tmp_path: Path,
                                                               layout: dict[str, str]) -> None:
    piped, sequential = _home(tmp_path / "piped"), _home(tmp_path / "seq", pipeline=False)
    homes += [piped, sequential]
    for tag in ("whiteout", "rooted"):
        a, b = piped.service.pull(layout[tag]), sequential.service.pull(layout[tag])
        assert a.chain == b.chain and a.digest == b.digest
        for key in a.chain:
            assert _tree(piped.layer_dir(key)) == _tree(sequential.layer_dir(key)), key
    rooted = piped.service.get(layout["rooted"])
    # the second layer carries no "./": its root takes the 0750 of the first, as if prepared on it
    assert stat.S_IMODE(piped.layer_dir(rooted.chain[1]).stat().st_mode) == 0o750
    assert not [i.key for i in piped.pc.snapshotter.walk() if i.key.startswith("extract-")]
    detached = [r for r in piped.engine.history(machine=UNPACK) if (r.request or {}).get("detached")]
    assert detached, "with overlay, upper layers unpack without waiting for their parent"
    outputs = [r.output for r in piped.engine.history(machine=UNPACK) if r.state == "succeeded"]
    assert outputs and all("verify_s" in o for o in outputs)  # verify_layout ran after every unpack


def test_a_truncated_blob_is_fetched_again_by_the_next_pull(homes: list[Home], tmp_path: Path,
                                                            layout: dict[str, str]) -> None:
    home = _home(tmp_path / "h")
    homes.append(home)
    rec = home.service.pull(layout["whiteout"])
    blob = home.pc.content.path(rec.layers[1]["digest"])
    good = blob.read_bytes()
    os.truncate(blob, len(good) // 2)
    home.service.pull(layout["whiteout"])
    assert blob.read_bytes() == good
    assert any("damaged" in m and "bytes on disk" in m for m in home.events(PULL, "repair"))
    fetches = [r for r in home.engine.history(machine=FETCH) if r.resource_id == f"blob:{rec.layers[1]['digest']}"]
    assert [r.state for r in fetches] == ["succeeded", "succeeded"]  # downloaded again, not handed off


def test_a_flipped_byte_is_refetched_under_the_full_policy_and_found_by_verify_under_size(
        homes: list[Home], tmp_path: Path, layout: dict[str, str]) -> None:
    home = _home(tmp_path / "h")
    homes.append(home)
    rec = home.service.pull(layout["whiteout"])
    blob = home.pc.content.path(rec.layers[0]["digest"])
    good = blob.read_bytes()

    def flip() -> None:
        blob.chmod(0o644)
        data = bytearray(good)
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))

    flip()
    home.service.pull(layout["whiteout"])  # size policy: same size, reused (cheap check)
    assert blob.read_bytes() != good
    report = home.service.verify(layout["whiteout"])[0]
    assert not report.ok and any("corrupt" in p for p in report.problems)
    assert not blob.exists()  # a corrupt blob is never kept for use
    repaired = home.service.verify(layout["whiteout"], repair=True)[0]
    assert repaired.repaired and blob.read_bytes() == good

    home.pc.verify_policy = BlobPolicy.FULL
    flip()
    home.service.pull(layout["whiteout"])
    assert blob.read_bytes() == good
    assert all(r.ok for r in home.service.verify(all_images=True))


def test_a_removed_snapshot_directory_is_rebuilt_before_a_job_starts_or_refused(
        homes: list[Home], tmp_path: Path, layout: dict[str, str]) -> None:
    home = _home(tmp_path / "h")
    homes.append(home)
    rec = home.service.pull(layout["whiteout"])
    shutil.rmtree(home.layer_dir(rec.chain[1]))
    with pytest.raises(FailedPrecondition, match="damaged"):
        home.service.rootfs_for_job(layout["whiteout"], "job-never", pull="never")
    assert not [i for i in home.pc.snapshotter.walk() if i.key == "job-job-never"]

    rootfs = home.service.rootfs_for_job(layout["whiteout"], "job1")
    assert any("storage is gone" in m for m in home.events(UNPACK, "repair") + home.events(PULL, "repair"))
    target = tmp_path / "merged"
    target.mkdir()
    mount_all(rootfs.mounts, target)
    try:
        for path, content in whiteout_image().expect_files.items():
            assert (target / path).read_bytes() == content
        for path in whiteout_image().expect_absent:
            assert not os.path.lexists(target / path)
    finally:
        unmount(target)
    home.service.job_removed("job1")


def test_a_hostile_layer_is_refused_with_one_structured_warning(homes: list[Home], tmp_path: Path,
                                                               layout: dict[str, str],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    from capsa.metrics.prometheus import PipelineStats

    stats = PipelineStats()
    home = _home(tmp_path / "h", observer=stats)
    homes.append(home)
    with caplog.at_level(logging.WARNING, logger="capsa.images"), pytest.raises(UnsafeArchive):
        home.service.pull(layout["hostile"])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("unpack refused:")]
    assert len(lines) == 1
    assert f'image="{home.service.canonical(layout["hostile"])}"' in lines[0]
    assert "layer=sha256:" in lines[0] and 'entry="x/up"' in lines[0] and "class=unsafe_archive" in lines[0]
    assert "climbs above the root" in lines[0]
    assert stats.refusals_by_class == {"unsafe_archive": 1}
    assert stats.unpack.count == 1  # the good bottom layer was unpacked (and timed)
