"""Faults during pulls (issue 3, item 8): corrupt blobs, a registry answering 500s, concurrent pulls.

The registry is the real docker-registry; faults are made either in its storage
on disk (a tampered blob) or by a recording HTTP proxy in front of it (500s,
throttling), which also counts what capsa really fetched.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_helpers import (
    FAST_RETRY_YAML,
    ImageDaemon,
    ProxyHandler,
    RegistryProxy,
    Seen,
    active_runs,
    blob_hexes,
    image_daemon,
    image_with,
    ingest_report,
    integrity_check,
    one_line_error,
    push_image,
    query,
    random_layer,
    registry_blob_file,
    runs,
    snapshot_keys,
)

from tests.fixtures.images import Layer, TestImage, busybox_layer
from tests.fixtures.servers import RegistryServer
from tests.fixtures.waiting import wait_for

MAX_ATTEMPTS = 4  # FAST_RETRY_YAML


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageDaemon]:
    with image_daemon(tmp_path_factory.mktemp("img-faults") / "home", server_yaml=FAST_RETRY_YAML) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def proxy(registry_server: RegistryServer) -> Iterator[RegistryProxy]:
    p = RegistryProxy(registry_server.host)
    yield p
    p.close()


@pytest.fixture
def fresh_proxy(proxy: RegistryProxy) -> Iterator[RegistryProxy]:
    proxy.reset()
    yield proxy
    proxy.reset()


def two_layer_image(seed: int, size: int = 256 << 10, compression: str = "none") -> TestImage:
    layer, _ = random_layer(seed, files=1, file_bytes=size, compression=compression, prefix=f"data{seed}")
    return image_with([Layer(busybox_layer()), layer], {"Cmd": ["/bin/sh"]})


def blob_gets(proxy: RegistryProxy) -> dict[str, int]:
    counts: dict[str, int] = {}
    for seen in proxy.requests("GET", "/blobs/"):
        digest = seen.path.rsplit("/", 1)[1]
        counts[digest] = counts.get(digest, 0) + 1
    return counts


def events_of(d: ImageDaemon, run_id: str) -> list[tuple[str, str, str]]:
    return [(r["kind"], r["transition"] or "", r["message"])
            for r in query(d.home, "SELECT kind, transition, message FROM fsm_events WHERE run_id = ? ORDER BY seq",
                           (run_id,))]


def assert_clean(d: ImageDaemon) -> None:
    assert active_runs(d.home) == []
    assert ingest_report(d.home) == {}
    assert not [k for k in snapshot_keys(d.home) if k.startswith("extract-")]
    assert integrity_check(d.home) == "ok"


# -- a corrupt blob ---------------------------------------------------------------------------------------------


def test_corrupt_blob_fails_with_checksum_mismatch_and_keeps_nothing(
        d: ImageDaemon, registry_server: RegistryServer, tmp_path: Path) -> None:
    image = two_layer_image(101)
    push_image(tmp_path, image, registry_server, "capsa-e2e/corrupt:1")
    ref = registry_server.ref("capsa-e2e/corrupt:1")
    bad = image.layers[1].digest
    stored = registry_blob_file(registry_server, bad)
    good_bytes = stored.read_bytes()
    tampered = bytearray(good_bytes)
    tampered[len(tampered) // 2] ^= 0xFF  # one flipped byte, same length: only the digest can tell
    stored.write_bytes(bytes(tampered))
    try:
        res = d.cli("image", "pull", ref)
        assert res.returncode == 10
        err = one_line_error(res)
        assert bad in err and "nothing was kept" in err
    finally:
        stored.write_bytes(good_bytes)
    assert bad.hex not in blob_hexes(d.home)
    assert ref not in {i["ref"] for i in d.cli_json("image", "ls")}
    assert_clean(d)
    # a checksum mismatch is not retried: one attempt, then abort
    fetch = [r for r in runs(d.home, "blob.fetch") if r["resource_id"] == f"blob:{bad}"]
    assert [r["state"] for r in fetch] == ["failed"] and fetch[0]["error_code"] == "checksum_mismatch"
    kinds = [k for k, _, _ in events_of(d, fetch[0]["run_id"])]
    assert kinds.count("transition_start") == 1 and "abort" in kinds and "retry" not in kinds
    # the registry repaired, the same pull works: nothing poisoned was left behind
    d.cli_ok("image", "pull", ref)
    assert bad.hex in blob_hexes(d.home)


# -- a registry answering 500s ------------------------------------------------------------------------------------


def answer_500(times: int | None, path_part: str) -> object:
    """A proxy fault: HTTP 500 for requests whose path contains ``path_part`` (the first ``times`` ones)."""
    hits = [0]

    def fault(handler: ProxyHandler, seen: Seen) -> bool:
        if path_part not in seen.path or (times is not None and hits[0] >= times):
            return False
        hits[0] += 1
        seen.status = 500
        body = json.dumps({"errors": [{"code": "UNKNOWN", "message": "injected failure"}]}).encode()
        handler.reply(500, body, {"Content-Type": "application/json"})
        return True

    return fault


def retry_delays(events: list[tuple[str, str, str]]) -> list[float]:
    return [float(re.search(r" in ([0-9.]+)s", msg).group(1)) for kind, _, msg in events if kind == "retry"]  # type: ignore[union-attr]


def test_registry_500s_are_retried_with_backoff_then_fail_clearly(
        d: ImageDaemon, registry_server: RegistryServer, fresh_proxy: RegistryProxy, tmp_path: Path) -> None:
    push_image(tmp_path, two_layer_image(102), registry_server, "capsa-e2e/flaky:1")
    ref = f"{fresh_proxy.host}/capsa-e2e/flaky:1"
    fresh_proxy.fault = answer_500(None, "/manifests/")  # type: ignore[assignment]
    res = d.cli("image", "pull", ref)
    assert res.returncode == 7
    err = one_line_error(res)
    assert "HTTP 500" in err and "injected failure" in err and "capsa-e2e/flaky" in err

    history = d.cli_json("image", "history", ref)
    assert len(history) == 1 and history[0]["state"] == "failed"
    kinds = [e["kind"] for e in history[0]["events"]]
    assert kinds.count("transition_start") == MAX_ATTEMPTS
    assert kinds.count("retry") == MAX_ATTEMPTS - 1
    assert "gave up after 4 attempts" in [e for e in history[0]["events"] if e["kind"] == "error"][-1]["message"]
    gets = fresh_proxy.requests("GET", "/manifests/")
    assert len(gets) == MAX_ATTEMPTS  # every attempt reached the registry, no more
    delays = retry_delays(events_of(d, history[0]["run_id"]))
    gaps = [b.at - a.at for a, b in zip(gets, gets[1:], strict=False)]
    assert len(delays) == len(gaps) == MAX_ATTEMPTS - 1
    for delay, gap in zip(delays, gaps, strict=True):
        assert gap >= delay * 0.9, (delays, gaps)  # the engine waited at least the announced backoff
    assert delays[-1] > delays[0]  # and the backoff grew
    assert_clean(d)


def test_registry_that_recovers_is_retried_to_success(
        d: ImageDaemon, registry_server: RegistryServer, fresh_proxy: RegistryProxy, tmp_path: Path) -> None:
    image = two_layer_image(103)
    push_image(tmp_path, image, registry_server, "capsa-e2e/recovers:1")
    ref = f"{fresh_proxy.host}/capsa-e2e/recovers:1"
    fresh_proxy.fault = answer_500(2, "/manifests/")  # type: ignore[assignment]
    out = d.cli_ok("image", "pull", ref)
    assert image.manifest_digest in out
    kinds = [e["kind"] for e in d.cli_json("image", "history", ref)[0]["events"]]
    assert kinds.count("retry") == 2 and kinds[-1] == "finish"
    assert_clean(d)


def test_blob_500s_are_retried_per_blob_not_multiplied(
        d: ImageDaemon, registry_server: RegistryServer, fresh_proxy: RegistryProxy, tmp_path: Path) -> None:
    image = two_layer_image(104)
    push_image(tmp_path, image, registry_server, "capsa-e2e/badblob:1")
    ref = f"{fresh_proxy.host}/capsa-e2e/badblob:1"
    bad = image.layers[1].digest
    fresh_proxy.fault = answer_500(None, f"/blobs/{bad}")  # type: ignore[assignment]
    res = d.cli("image", "pull", ref, timeout=60)
    assert res.returncode == 7
    assert bad in one_line_error(res) and "HTTP 500" in res.stderr.decode()
    # the blob's own run retried it MAX_ATTEMPTS times; the pull must not start that over again
    assert blob_gets(fresh_proxy)[bad] == MAX_ATTEMPTS
    # what stays is the failed blob's (empty) ingest, kept for a resume, and prune removes it
    kept = ingest_report(d.home)
    assert all(f'"ref": "blob:{bad}"' in meta for meta in kept.values()), kept
    d.cli_ok("image", "prune", "-f")
    assert_clean(d)


# -- concurrent pulls ------------------------------------------------------------------------------------------------


def test_concurrent_pulls_of_one_image_do_the_work_once(
        d: ImageDaemon, registry_server: RegistryServer, fresh_proxy: RegistryProxy, tmp_path: Path) -> None:
    image = two_layer_image(105, size=2 << 20)
    push_image(tmp_path, image, registry_server, "capsa-e2e/together:1")
    ref = f"{fresh_proxy.host}/capsa-e2e/together:1"
    release = threading.Event()

    def hold_blobs(handler: ProxyHandler, seen: Seen) -> bool:
        if "/blobs/" in seen.path and "/manifests/" not in seen.path:
            release.wait(30)  # every client has time to ask for the pull while the first is under way
        return False

    config = json.loads(image.manifest_bytes)["config"]["digest"]
    fresh_proxy.fault = hold_blobs  # type: ignore[assignment]
    stored_before = blob_hexes(d.home)
    since = time.time()
    pullers = [d.popen_cli("image", "pull", ref) for _ in range(3)]
    try:
        wait_for(lambda: len(fresh_proxy.requests("GET", f"/blobs/{config}")) > 0, 30.0, what="the pull to resolve")
        time.sleep(3)  # the other two CLIs start (about 0.5 s each here) and join the run
    finally:
        release.set()
    outputs = [p.communicate(timeout=120) for p in pullers]
    for p, (out, err) in zip(pullers, outputs, strict=True):
        assert p.returncode == 0, err.decode()
        assert image.manifest_digest in out.decode()
    pulls = [r for r in runs(d.home, "image.pull") if r["resource_id"] == ref]
    assert [r["state"] for r in pulls] == ["succeeded"]  # one run, the others joined it
    assert len(fresh_proxy.requests("GET", "/manifests/")) == 1
    missing = {la.digest: 1 for la in image.layers if la.digest.hex not in stored_before}
    assert missing, "the test needs layers the store does not have yet"
    assert blob_gets(fresh_proxy) == {config: 1, **missing}  # each blob fetched once, by one run
    layer_runs = [r["resource_id"] for r in runs(d.home, "blob.fetch") if r["created_at"] >= since]
    assert sorted(layer_runs) == sorted(f"blob:{la.digest}" for la in image.layers)  # one run per layer
    assert_clean(d)


def test_concurrent_pulls_of_images_sharing_layers_fetch_shared_blobs_once(
        d: ImageDaemon, registry_server: RegistryServer, fresh_proxy: RegistryProxy, tmp_path: Path) -> None:
    shared, _ = random_layer(106, files=1, file_bytes=2 << 20, compression="gzip", prefix="shared")
    tops = [random_layer(107 + i, files=1, file_bytes=64 << 10, compression="none", prefix=f"top{i}")[0] for i in range(2)]
    images = [image_with([Layer(busybox_layer()), shared, top], {"Cmd": ["/bin/sh"]}) for top in tops]
    refs = []
    for i, image in enumerate(images):
        push_image(tmp_path, image, registry_server, f"capsa-e2e/sibling{i}:1")
        refs.append(f"{fresh_proxy.host}/capsa-e2e/sibling{i}:1")
    fresh_proxy.throttle_s = 0.03
    pullers = [d.popen_cli("image", "pull", ref) for ref in refs]
    for p in pullers:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    gets = blob_gets(fresh_proxy)
    assert gets.get(shared.digest) == 1, gets
    assert all(gets.get(top.digest) == 1 for top in tops), gets
    tops_chain = {json.loads(r["chain_json"])[-2] for r in query(d.home, "SELECT chain_json FROM images WHERE ref IN (?, ?)", refs)}
    assert len(tops_chain) == 1  # one snapshot for busybox+shared, unpacked once and shared
    unpacks = [r for r in runs(d.home, "layer.unpack") if r["resource_id"] in tops_chain and r["state"] == "succeeded"]
    assert len(unpacks) == 1
    assert_clean(d)


# -- prune while a pull is under way ------------------------------------------------------------------------------


def test_prune_during_a_pull_does_not_break_it(
        d: ImageDaemon, registry_server: RegistryServer, fresh_proxy: RegistryProxy, tmp_path: Path) -> None:
    first, _ = random_layer(110, files=1, file_bytes=128 << 10, compression="gzip", prefix="first")
    last, _ = random_layer(111, files=1, file_bytes=128 << 10, compression="none", prefix="last")
    image = image_with([first, last], {"Cmd": ["/bin/sh"]})
    push_image(tmp_path, image, registry_server, "capsa-e2e/pruned-midway:1")
    ref = f"{fresh_proxy.host}/capsa-e2e/pruned-midway:1"
    release = threading.Event()

    def hold_last_layer(handler: ProxyHandler, seen: Seen) -> bool:
        if last.digest in seen.path:
            release.wait(30)
        return False  # then forward it as usual

    fresh_proxy.fault = hold_last_layer  # type: ignore[assignment]
    puller = d.popen_cli("image", "pull", ref)
    try:
        wait_for(lambda: first.digest.hex in blob_hexes(d.home), 30.0, what="the first layer to be stored")
        d.cli_ok("image", "prune", "-f")  # the first layer is referenced by no image yet, but a pull needs it
    finally:
        release.set()
        out, err = puller.communicate(timeout=60)
    assert puller.returncode == 0, err.decode()
    assert image.manifest_digest in out.decode()
    assert_clean(d)
