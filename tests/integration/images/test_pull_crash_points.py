"""A pull SIGKILLed at each precise, named point, then resumed by a fresh process, converges.

The e2e suite kills a real daemon at random moments; this one kills a stand-in
process (this very file, run as a script: real Engine, real SQLite, real
overlay snapshotter, an OCI layout as source) exactly at the moments that are
hardest to hit at random: in the middle of a blob, between a blob's publish
and its ingest's removal, with a half-written layer, between a snapshot commit
and the run's record of it, and around the image record. A second process
resumes; the result must be the image an uninterrupted pull gives, with no
ingest, no ``extract-*`` snapshot and a database that passes integrity_check.

Usage as a worker: python test_pull_crash_points.py HOME REF CRASH_AT
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CRASH_POINTS = ("mid-download", "after-publish", "mid-unpack", "after-commit", "before-register", "after-register")
BIG = 3 << 20  # the big layer's file: several 1 MiB writes, so a kill lands inside it


@dataclass(frozen=True)
class Source:
    ref: str
    digest: str
    big_layer: str
    files: dict[str, str]  # path in the merged rootfs -> sha256 hex, for the two data layers


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    from capsa.images.oci import ImageConfig
    from tests.fixtures.images import Layer, TarBuilder, TestImage, busybox_layer, write_oci_layout

    rng = random.Random(4242)
    files: dict[str, str] = {}
    big = TarBuilder().dir("big")
    data = rng.randbytes(BIG)
    big.file("big/blob.bin", data)
    files["big/blob.bin"] = hashlib.sha256(data).hexdigest()
    many = TarBuilder().dir("many")
    for i in range(300):
        data = rng.randbytes(512)
        many.file(f"many/{i:03d}", data)
        files[f"many/{i:03d}"] = hashlib.sha256(data).hexdigest()
    layers = (Layer(busybox_layer(), "gzip"), Layer(big.build(), "none"), Layer(many.build(), "zstd"))
    image = TestImage(name="crash-points", layers=layers,
                      config=ImageConfig.model_validate({"architecture": "amd64", "os": "linux",
                                                         "config": {"Cmd": ["/bin/sh"]}}))
    root = tmp_path_factory.mktemp("crash-points") / "layout"
    write_oci_layout(root, {"t": image})
    return Source(ref=f"oci:{root}:t", digest=image.manifest_digest, big_layer=layers[1].digest, files=files)


def spawn(home: Path, ref: str, crash_at: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[3]), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, __file__, str(home), ref, crash_at], capture_output=True, text=True,
                          timeout=120, env=env)


def db_rows(home: Path, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{home / 'capsa.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return list(conn.execute(sql, params))
    finally:
        conn.close()


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_pull_killed_at_a_named_point_resumes_to_the_same_image(source: Source, tmp_path: Path, crash_at: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    crashed = spawn(home, source.ref, crash_at)
    assert crashed.returncode == -signal.SIGKILL, f"the worker was not killed at {crash_at}: {crashed.stderr[-2000:]}"
    if crash_at == "after-publish":  # the state this point exists for: a stored blob and its ingest still there
        assert os.listdir(home / "content" / "ingest")
    if crash_at == "mid-unpack":
        assert [r["key"] for r in db_rows(home, "SELECT key FROM snapshots WHERE key LIKE 'extract-%'")]

    resumed = spawn(home, source.ref, "none")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads(resumed.stdout.splitlines()[-1])
    assert result["digest"] == source.digest
    if crash_at == "mid-download":  # the partial blob was resumed where it stopped, not fetched again
        assert any(offset > 0 for offset in result["offsets"]), result

    assert os.listdir(home / "content" / "ingest") == []
    keys = [r["key"] for r in db_rows(home, "SELECT key FROM snapshots")]
    assert not [k for k in keys if k.startswith("extract-")]
    assert db_rows(home, "PRAGMA integrity_check")[0][0] == "ok"
    unfinished = db_rows(home, "SELECT machine FROM fsm_runs WHERE state IN ('queued','running','retry_wait')")
    assert unfinished == []
    pulls = db_rows(home, "SELECT state FROM fsm_runs WHERE machine = 'image.pull' ORDER BY created_at")
    assert pulls[0]["state"] in ("succeeded", "handed_off")  # the interrupted run itself finished
    chain = json.loads(db_rows(home, "SELECT chain_json FROM images")[0]["chain_json"])
    snapshots = home / "snapshots" / "overlay" / "snapshots"
    ids = {r["key"]: r["id"] for r in db_rows(home, "SELECT key, id FROM snapshots")}
    big_dir, many_dir = snapshots / str(ids[chain[1]]) / "fs", snapshots / str(ids[chain[2]]) / "fs"
    assert sorted(os.listdir(big_dir)) == ["big"] and os.listdir(big_dir / "big") == ["blob.bin"]
    assert sorted(os.listdir(many_dir)) == ["many"] and len(os.listdir(many_dir / "many")) == 300
    for path, want in source.files.items():
        layer = big_dir if path.startswith("big/") else many_dir
        assert hashlib.sha256((layer / path).read_bytes()).hexdigest() == want, path
    blob_dir = home / "content" / "blobs" / "sha256"
    for name in os.listdir(blob_dir):
        assert hashlib.sha256((blob_dir / name).read_bytes()).hexdigest() == name


# -- the worker ------------------------------------------------------------------------------------------------------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install(crash_at: str, pc: Any, big_layer: str, offsets: list[int]) -> None:
    """Make the process SIGKILL itself at ``crash_at`` (or, for "none", record resume offsets)."""
    import capsa.images.pull as pull_module
    import capsa.images.sources.local as local_module
    from capsa.images.content import ContentStore, Writer

    if crash_at == "none":
        original_start = local_module.start_offset

        def recording_start(writer: Any, offset: Any, desc: Any) -> int:
            start = original_start(writer, offset, desc)
            offsets.append(start)
            return start

        local_module.start_offset = recording_start  # type: ignore[assignment]
    elif crash_at == "mid-download":
        original_write = Writer.write

        def write(self: Writer, data: Any) -> int:
            n = original_write(self, data)
            if self.expected == big_layer and self.offset >= BIG // 2:
                _die()
            return n

        Writer.write = write  # type: ignore[method-assign]
    elif crash_at == "after-publish":
        original_publish = ContentStore._publish

        def publish(self: ContentStore, ingest_data: Path, digest: Any, size: int, media_type: Any) -> Any:
            info = original_publish(self, ingest_data, digest, size, media_type)
            if digest == big_layer:
                _die()
            return info

        ContentStore._publish = publish  # type: ignore[method-assign]
    elif crash_at == "mid-unpack":
        original_apply = pull_module.apply_layer

        def apply(path: Path, tree: Path, **kwargs: Any) -> Any:
            if path.name == big_layer.removeprefix("sha256:"):
                (tree / "big").mkdir()
                (tree / "big" / "half-written.bin").write_bytes(b"\0" * 4096)
                _die()
            return original_apply(path, tree, **kwargs)

        pull_module.apply_layer = apply  # type: ignore[assignment]
    elif crash_at == "after-commit":
        sn = pc.snapshotter
        original_commit = sn.commit
        commits = [0]

        def commit(name: str, key: str, labels: Any = None) -> None:
            original_commit(name, key, labels)
            commits[0] += 1
            if commits[0] == 2:
                _die()

        sn.commit = commit
    elif crash_at in ("before-register", "after-register"):
        original_put = pc.images.put

        def put(rec: Any) -> None:
            if crash_at == "before-register":
                _die()
            original_put(rec)
            _die()

        pc.images.put = put
    else:
        raise SystemExit(f"unknown crash point {crash_at}")


def _worker(home: Path, ref: str, crash_at: str) -> None:
    from capsa.fsm import Engine, RetryPolicy
    from capsa.images.content import ContentStore
    from capsa.images.oci import Digest
    from capsa.images.pull import PullContext
    from capsa.images.reference import parse_reference
    from capsa.images.service import ImageService
    from capsa.images.sources import RegistryConfig, S3Config, open_source
    from capsa.images.store import ImageStore
    from capsa.images.unpack import UnpackLimits
    from capsa.snapshots import open_snapshotter
    from capsa.state.db import Database

    parsed = parse_reference(ref)
    resolved = open_source(parsed).resolve(parsed)
    big_layer = Digest(resolved.layers[1].digest)
    db = Database(home / "capsa.db")
    engine = Engine(db, retry=RetryPolicy(base_s=0.01, cap_s=0.05, max_attempts=3))
    sn = open_snapshotter("overlay", home / "snapshots" / "overlay", db)
    pc = PullContext(content=ContentStore(home / "content", db), images=ImageStore(db), snapshotter=sn,
                     registry=RegistryConfig(), s3=S3Config(), limits=UnpackLimits())
    service = ImageService(engine, pc)
    offsets: list[int] = []
    _install(crash_at, pc, big_layer, offsets)
    engine.resume()
    rec = service.pull(ref)
    print(json.dumps({"digest": rec.digest, "offsets": offsets}), flush=True)
    engine.shutdown(wait=True)
    sn.close()
    db.close()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
