"""`kill -9` of the daemon at seeded random points of a multi-layer registry pull (issue 3, item 8).

Each trial starts from an empty store, starts `capsa image pull`, kills the
daemon with SIGKILL after a random delay (half of the trials inside the
download window, half inside the unpack window, measured on an uninterrupted
pull first), restarts it and pulls again. Whatever the kill interrupted, the
store must converge to the same image: same manifest digest, every layer's
files byte-identical, every blob hashing to its name, no ingest left, no
``extract-*`` snapshot, no half-made snapshot directory, no unfinished run,
and ``PRAGMA integrity_check`` = ok.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from image_helpers import (
    ImageDaemon,
    active_runs,
    blob_hexes,
    image_daemon,
    image_with,
    ingest_leftovers,
    ingest_report,
    integrity_check,
    layer_dir,
    push_image,
    query,
    random_layer,
    snapshot_dirs,
    snapshot_keys,
    snapshot_rows,
)

from capsa.errors import CapsaError
from tests.fixtures.images import Layer, busybox_layer
from tests.fixtures.servers import RegistryServer

SEED = 20250807
TRIALS = 20


@dataclass(frozen=True)
class CrashImage:
    ref: str
    digest: str
    layer_files: list[dict[str, str]]  # per layer: {path inside the layer: sha256 hex}; {} for busybox


@pytest.fixture(scope="module")
def crash_image(tmp_path_factory: pytest.TempPathFactory, registry_server: RegistryServer) -> CrashImage:
    """busybox + three layers of incompressible data (~18 MB) + one of 600 small files, mixed compressions."""
    layers = [Layer(busybox_layer(), "gzip")]
    files: list[dict[str, str]] = [{}]
    for i, (compression, count, size) in enumerate(
            [("none", 1, 6 << 20), ("gzip", 1, 6 << 20), ("zstd", 3, 2 << 20), ("none", 600, 1024)]):
        layer, digests = random_layer(SEED + i, files=count, file_bytes=size, compression=compression, prefix=f"l{i}")
        layers.append(layer)
        files.append(digests)
    image = image_with(layers, {"Cmd": ["/bin/sh"]})
    digest = push_image(tmp_path_factory.mktemp("crash-layout"), image, registry_server, "capsa-e2e/crash:1")
    return CrashImage(ref=registry_server.ref("capsa-e2e/crash:1"), digest=digest, layer_files=files)


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageDaemon]:
    with image_daemon(tmp_path_factory.mktemp("img-crash") / "home") as daemon:
        yield daemon


def reset(d: ImageDaemon, ref: str) -> None:
    with d.client() as client:
        if any(i.ref == ref for i in client.list_images()):
            client.remove_image(ref, force=True)
        client.prune_images()
    assert blob_hexes(d.home) == set() and snapshot_keys(d.home) == set() and ingest_leftovers(d.home) == []


def pull_quietly(d: ImageDaemon, ref: str) -> None:
    """Pull through the API until the daemon dies under it (faster to start than the CLI)."""
    with contextlib.suppress(CapsaError), d.client() as client:
        for _ in client.pull_image(ref):
            pass


def wait_for_run(d: ImageDaemon, since: float) -> dict[str, object]:
    """The image.pull run created after ``since``, polled every 2 ms (kill delays are tens of ms)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = query(d.home, "SELECT * FROM fsm_runs WHERE machine = 'image.pull' AND created_at >= ?"
                             " ORDER BY created_at DESC LIMIT 1", (since,))
        if rows:
            return dict(rows[0])
        time.sleep(0.002)
    raise AssertionError("the pull run did not start")


def check_converged(d: ImageDaemon, image: CrashImage) -> None:
    home = d.home
    assert active_runs(home) == []
    assert ingest_report(home) == {}
    keys = snapshot_keys(home)
    assert not [k for k in keys if k.startswith("extract-")]
    assert all(name.isdigit() for name in snapshot_dirs(home)), snapshot_dirs(home)
    assert len(snapshot_dirs(home)) == len(snapshot_rows(home))
    assert integrity_check(home) == "ok"
    row = query(home, "SELECT digest, chain_json, layers_json FROM images WHERE ref = ?", (image.ref,))[0]
    assert row["digest"] == image.digest
    chain = json.loads(row["chain_json"])
    assert len(chain) == len(image.layer_files) and set(chain) <= keys
    for key, files in zip(chain, image.layer_files, strict=True):
        if not files:
            continue
        fs = layer_dir(home, key)
        prefix = next(iter(files)).split("/")[0]
        assert sorted(os.listdir(fs / prefix)) == sorted(p.split("/")[1] for p in files)  # nothing extra, nothing missing
        for path, want in files.items():
            assert hashlib.sha256((fs / path).read_bytes()).hexdigest() == want, path
    blob_dir = home / "content" / "blobs" / "sha256"
    for layer in json.loads(row["layers_json"]):
        hex_ = layer["digest"].removeprefix("sha256:")
        assert hashlib.sha256((blob_dir / hex_).read_bytes()).hexdigest() == hex_


def phase_at_kill(d: ImageDaemon, run_id: str) -> str:
    row = query(d.home, "SELECT state, current_transition FROM fsm_runs WHERE run_id = ?", (run_id,))[0]
    return "finished" if row["state"] in ("succeeded", "handed_off", "failed") else str(row["current_transition"])


@pytest.mark.slow
def test_kill9_at_random_points_of_a_pull_converges(d: ImageDaemon, crash_image: CrashImage) -> None:
    rng = random.Random(SEED)
    # An uninterrupted pull first: where do download and unpack happen, in ms after the run is created?
    reset(d, crash_image.ref)
    d.cli_ok("image", "pull", crash_image.ref)
    check_converged(d, crash_image)
    events = d.cli_json("image", "history", crash_image.ref, "-n", "1")[0]["events"]
    at = {(e["kind"], e.get("transition")): int(e["at_ns"]) / 1e6 for e in events}
    t0 = at[("start", None)]
    fetch_end = at[("transition_complete", "fetch")] - t0
    unpack_end = at[("transition_complete", "unpack")] - t0
    assert fetch_end > 0 and unpack_end > fetch_end

    phases: Counter[str] = Counter()
    for trial in range(TRIALS):
        window = (0.0, fetch_end) if trial % 2 == 0 else (fetch_end, unpack_end)
        delay_ms = rng.uniform(*window)
        started = time.monotonic()
        reset(d, crash_image.ref)
        since = time.time()
        puller = threading.Thread(target=pull_quietly, args=(d, crash_image.ref))
        puller.start()
        run = wait_for_run(d, since)
        # the delay counts from the run's creation in the daemon, not from when this poll saw it
        time.sleep(max(0.0, float(run["created_at"]) + delay_ms / 1000 - time.time()))  # type: ignore[arg-type]
        d.kill9()
        phases[phase_at_kill(d, str(run["run_id"]))] += 1
        puller.join(30)  # its stream broke with the daemon
        d.start()
        out = d.cli_ok("image", "pull", crash_image.ref)
        assert crash_image.digest in out, f"trial {trial} (kill at {delay_ms:.1f} ms): {out}"
        check_converged(d, crash_image)
        final = query(d.home, "SELECT state FROM fsm_runs WHERE run_id = ?", (run["run_id"],))[0]["state"]
        assert final in ("succeeded", "handed_off"), f"trial {trial}: the interrupted run ended {final}"
        print(f"trial {trial}: kill {delay_ms:.0f} ms after the run started, trial took {time.monotonic() - started:.2f} s")
    print(f"where the kills landed: {dict(phases)}")
    # the kills really landed inside both phases (not all before or after the work)
    assert phases["fetch"] + phases["resolve"] >= 3 and phases["unpack"] >= 3, phases
