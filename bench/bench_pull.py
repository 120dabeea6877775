#!/usr/bin/env python3
"""Benchmark `capsa image pull` from a local registry against `skopeo copy` + `umoci unpack`.

    sudo .venv/bin/python bench/bench_pull.py [--runs 3] [--no-doc]

Builds once (cached under ``/var/tmp/capsa-bench/pull5``) a five-layer gzip image of
about 1 GB / 60k entries from the host's Python, shared files and toolchain
headers (the sources of ``bench_unpack.py``), then starts Debian's
``docker-registry`` on 127.0.0.1, pushes the image with skopeo, and alternates:

* capsa: a fresh daemon and CAPSA_HOME per run (started before the clock), then
  ``capsa image pull 127.0.0.1:PORT/bench/big:1`` timed until it exits, i.e. until
  every layer is downloaded, verified and committed as a snapshot (a ready rootfs:
  a job's snapshot on top is one ``prepare``);
* peer: ``skopeo copy docker://… oci:DIR:big`` then ``umoci unpack --image DIR:big
  BUNDLE`` (a ready rootfs in BUNDLE/rootfs), timed together.

Medians of ``--runs`` runs each (page cache warm, outputs deleted between runs and
``sync`` run before each, outside the clock, on both sides alike: the previous run's
removal and write-back must not land in the next one's time). What is timed is what a
user waits for: until the command returns with a rootfs ready to run (capsa: the image
registered, every layer committed; the pipeline overlaps downloads and unpacks). With
``--writeback`` each side also waits, inside its clock, for ``syncfs`` of its output
filesystem (nothing of the rootfs left only in the page cache). Then it profiles one capsa pull: per-phase wall times from the
pull's own durable FSM events, and each component measured alone on the same
blobs (HTTP download only, sha256 only, gunzip only, capsa's unpacker alone).
Writes the section "Image pull" of docs/BENCHMARKS.md unless ``--no-doc``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import cProfile
import datetime as dt
import hashlib
import json
import os
import pstats
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, free_port, running_daemon, scratch_dir, section_header, update_section  # noqa: E402

from capsa.images.content import digest_file  # noqa: E402
from capsa.images.unpack import UnpackLimits, apply_layer  # noqa: E402

CACHE = Path("/var/tmp/capsa-bench/pull5")
REPO, TAG = "bench/big", "1"
# (name, tar arguments relative to /): one layer per group, the way an image build stacks them
LAYERS = [
    ("python3", ["usr/lib/python3"]),
    ("python3.11", ["usr/lib/python3.11"]),
    ("share-docs", ["usr/share/locale", "usr/share/doc", "usr/share/man"]),
    ("share-rest", ["--exclude=usr/share/locale", "--exclude=usr/share/doc", "--exclude=usr/share/man", "usr/share"]),
    ("toolchain", ["usr/include", "usr/lib/gcc"]),
]
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
LIMITS = UnpackLimits(max_entries=1_000_000, max_total_bytes=64 << 30)


@dataclass(frozen=True)
class LayerBlob:
    name: str
    digest: str  # of the gzip blob
    size: int
    diff_id: str  # of the uncompressed tar
    tar_size: int
    entries: int
    path: Path


# -- building the image ----------------------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    return str(digest_file(path)[0])


def _build_layer(name: str, args: list[str], work: Path) -> dict[str, Any]:
    tar = work / f"{name}.tar"
    sources = [a for a in args if a.startswith("--") or (Path("/") / a).exists()]
    subprocess.run(["tar", "-C", "/", "--sort=name", "-cf", str(tar), *sources], check=True)
    entries = int(subprocess.run(f"tar -tf {tar} | wc -l", shell=True, check=True, capture_output=True,
                                 text=True).stdout)
    diff_id, tar_size = _sha256_file(tar), tar.stat().st_size
    subprocess.run(["gzip", "-n", "-6", str(tar)], check=True)  # -> NAME.tar.gz, what registries serve
    gz = work / f"{name}.tar.gz"
    return {"name": name, "digest": _sha256_file(gz), "size": gz.stat().st_size, "diff_id": diff_id,
            "tar_size": tar_size, "entries": entries, "file": gz.name}


def build_image(cache: Path) -> tuple[Path, list[LayerBlob], str]:
    """The OCI layout (cached): one gzip layer per LAYERS entry; returns (layout, layers, manifest digest)."""
    layout, meta = cache / "layout", cache / "layers.json"
    if not meta.exists():
        shutil.rmtree(cache, ignore_errors=True)
        work = cache / "build"
        work.mkdir(parents=True)
        print("building the image layers (once, cached in", cache, ") ...", flush=True)
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            built = list(pool.map(lambda la: _build_layer(la[0], la[1], work), LAYERS))
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        for layer in built:
            os.rename(work / layer["file"], blobs / layer["digest"].removeprefix("sha256:"))
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
                             "rootfs": {"type": "layers", "diff_ids": [la["diff_id"] for la in built]}},
                            sort_keys=True).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
                       "digest": "sha256:" + hashlib.sha256(config).hexdigest()},
            "layers": [{"mediaType": GZIP_LAYER, "size": la["size"], "digest": la["digest"]} for la in built],
        }).encode()
        for doc in (config, manifest):
            (blobs / hashlib.sha256(doc).hexdigest()).write_bytes(doc)
        manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
            "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "big"}}]}))
        shutil.rmtree(work)
        meta.write_text(json.dumps({"manifest": manifest_digest, "layers": built}, indent=1))
    data = json.loads(meta.read_text())
    layers = [LayerBlob(name=la["name"], digest=la["digest"], size=la["size"], diff_id=la["diff_id"],
                        tar_size=la["tar_size"], entries=la["entries"],
                        path=layout / "blobs" / "sha256" / la["digest"].removeprefix("sha256:"))
              for la in data["layers"]]
    return layout, layers, data["manifest"]


# -- the registry ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def registry(work: Path) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1 with storage in ``work``; yields host:port."""
    binary = shutil.which("docker-registry")
    if binary is None:
        raise SystemExit("docker-registry not found: apt-get install docker-registry")
    port = free_port()
    config = work / "registry.yml"
    config.write_text(yaml.safe_dump({
        "version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(work / "storage")}},
        "http": {"addr": f"127.0.0.1:{port}"}}))
    log = open(work / "registry.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    log.close()
    try:
        pool = urllib3.PoolManager()
        deadline = time.monotonic() + 30
        while True:
            try:
                pool.request("GET", f"http://127.0.0.1:{port}/v2/", retries=False, timeout=1)
                break
            except urllib3.exceptions.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"registry did not start: {(work / 'registry.log').read_text()[-2000:]}") from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def fresh_fs(kind: str, base: Path, size_bytes: int = 6 << 30) -> Iterator[Path]:
    """Where one run writes: a new journaled ext4 on a loop device ("loop"), or a dir on /var/tmp ("disk").

    A fresh filesystem per run keeps one run's deleted trees (ext4 reuses freed inodes lazily) and dirty
    pages from slowing the next, and keeps other users of the shared disk's filesystem out of the figures.
    """
    if kind == "disk":
        target = base / "out"
        target.mkdir()
        try:
            yield target
        finally:
            shutil.rmtree(target)
        return
    image, mnt = base / "loop-ext4.img", base / "loop-ext4"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(size_bytes)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    dev = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        subprocess.run(["mount", dev, str(mnt)], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)
        image.unlink()
        mnt.rmdir()


# -- the contenders ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float  # user + system seconds of every process doing the work


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, all threads


def timed(argv: list[str], *, also_pid: int | None = None, **kwargs: Any) -> tuple[Timing, str]:
    """Run ``argv``; wall time, and CPU time of it plus (``also_pid``) a long-lived helper such as the daemon."""
    cpu0 = _children_cpu() + (_process_cpu(also_pid) if also_pid else 0.0)
    start = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    elapsed = time.perf_counter() - start
    cpu = _children_cpu() + (_process_cpu(also_pid) if also_pid else 0.0) - cpu0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr[-2000:]}")
    return Timing(elapsed, cpu), res.stdout


def count_entries(root: Path) -> int:
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(root))


def with_writeback(timing: Timing, out: Path, writeback: bool) -> Timing:
    """``timing`` plus, when asked, the ``syncfs`` of the output filesystem (a user waiting for durability)."""
    if not writeback:
        return timing
    synced, _ = timed(["sync", "-f", str(out)])
    return Timing(timing.wall + synced.wall, timing.cpu + synced.cpu)


def capsa_run(work: Path, ref: str, manifest: str, profile: bool,
              writeback: bool = False) -> tuple[Timing, dict[str, Any] | None]:
    home = work / "capsa" / "home"
    log = work / "capsa" / "daemon.log"
    log.unlink(missing_ok=True)
    try:
        with running_daemon(home) as daemon:
            timing, out = timed(daemon.cli_argv("image", "pull", ref), also_pid=daemon.proc.pid, env=daemon.env)
            timing = with_writeback(timing, home, writeback)
            if manifest not in out:
                raise RuntimeError(f"capsa pulled something else: {out}")
            details = fsm_profile(home / "capsa.db") if profile else None
    except RuntimeError:
        print("daemon log:", log.read_text()[-3000:] if log.exists() else "(none)", file=sys.stderr)
        raise
    return timing, details  # the whole output filesystem goes after the run


def peer_run(work: Path, ref: str, writeback: bool = False) -> tuple[Timing, Timing, int]:
    layout, bundle = work / "oci", work / "bundle"
    copy, _ = timed(["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
                     f"docker://{ref}", f"oci:{layout}:big"])
    unpack, _ = timed(["umoci", "unpack", "--image", f"{layout}:big", str(bundle)])
    unpack = with_writeback(unpack, bundle, writeback)
    entries = count_entries(bundle / "rootfs")
    return copy, unpack, entries


# -- where capsa's time goes ---------------------------------------------------------------------------------------------


def fsm_profile(db_path: Path) -> dict[str, Any]:
    """Per-phase wall times of the one pull in this database, from its durable FSM events."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        def span(run_id: str) -> tuple[float, float]:
            rows = conn.execute("SELECT MIN(at) a, MAX(at) b FROM fsm_events WHERE run_id = ?", (run_id,)).fetchone()
            return float(rows["a"]), float(rows["b"])

        pull = conn.execute("SELECT run_id FROM fsm_runs WHERE machine = 'image.pull'").fetchone()["run_id"]
        marks = {(r["kind"], r["transition"]): float(r["at"]) for r in conn.execute(
            "SELECT kind, transition, at FROM fsm_events WHERE run_id = ?", (pull,))}
        phases = {name: marks[("transition_complete", name)] - marks[("transition_start", name)]
                  for name in ("resolve", "fetch", "unpack", "register")}
        children = {}
        for machine in ("blob.fetch", "layer.unpack"):
            children[machine] = [span(r["run_id"]) for r in conn.execute(
                "SELECT run_id FROM fsm_runs WHERE machine = ? ORDER BY created_at", (machine,))]
        return {"phases": phases, "children": children, "start": marks[("start", None)]}
    finally:
        conn.close()


def components(layers: list[LayerBlob], registry_host: str,
               new_fs: Callable[[], contextlib.AbstractContextManager[Path]]) -> dict[str, float]:
    """Each piece of a pull alone, on the same blobs (seconds)."""
    out: dict[str, float] = {}
    pool = urllib3.PoolManager(maxsize=8)

    def download(layer: LayerBlob) -> int:
        resp = pool.request("GET", f"http://{registry_host}/v2/{REPO}/blobs/{layer.digest}", preload_content=False)
        n = 0
        for chunk in resp.stream(1 << 20):
            n += len(chunk)
        resp.release_conn()
        return n

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(layers)) as ex:
        assert sum(ex.map(download, layers)) == sum(la.size for la in layers)
    out["download (all layers in parallel, to nowhere)"] = time.perf_counter() - start
    start = time.perf_counter()
    for layer in layers:
        digest_file(layer.path)
    out["sha256 of the gzip blobs (one core)"] = time.perf_counter() - start
    start = time.perf_counter()
    for layer in layers:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        with open(layer.path, "rb", buffering=0) as f:
            while chunk := f.read(1 << 20):
                inflater.decompress(chunk)
    out["gunzip to nowhere, stdlib zlib (one core)"] = time.perf_counter() - start
    with contextlib.suppress(ImportError):
        from isal import igzip

        start = time.perf_counter()
        for layer in layers:
            with igzip.open(layer.path, "rb") as f:
                while f.read(1 << 20):
                    pass
        out["gunzip to nowhere, isal igzip (one core; what the unpacker uses)"] = time.perf_counter() - start
    with new_fs() as tmp:
        start = time.perf_counter()
        for i, layer in enumerate(layers):
            dest = Path(tmp) / str(i)
            dest.mkdir()
            subprocess.run(["tar", "-xzf", str(layer.path), "-C", str(dest)], check=True)
        out[f"for scale: GNU `tar -xzf` of the {len(layers)} layers, one after another"] = time.perf_counter() - start
    profiler = cProfile.Profile()
    with new_fs() as tmp:
        start = time.perf_counter()
        profiler.enable()
        for i, layer in enumerate(layers):
            dest = Path(tmp) / str(i)
            dest.mkdir()
            apply_layer(layer.path, dest, media_type=GZIP_LAYER, limits=LIMITS, whiteout_mode="overlay")
        profiler.disable()
        total = time.perf_counter() - start
    out[f"capsa apply_layer of the {len(layers)} gzip layers, one after another (cProfile on)"] = total
    # Where the unpacker's own thread spends it (decompression runs on a producer thread, not seen here).
    by_call: dict[str, float] = {}
    for (_, _, func), (_, _, own, _, _) in pstats.Stats(profiler).stats.items():  # type: ignore[attr-defined]
        for name, label in (("posix.open", "open(O_CREAT) of new files"), ("posix.write", "write"),
                            ("copy_file_range", "write"), ("posix.mkdir", "mkdir"),
                            ("posix.symlink", "symlink"), ("posix.utime", "utime"), ("posix.chmod", "chmod/chown"),
                            ("posix.chown", "chmod/chown"), ("lock' objects", "waiting for the decompressor"),
                            ("HASH", "sha256 of the uncompressed stream")):
            if name in func:
                by_call[label] = by_call.get(label, 0.0) + own
                break
    for label, seconds in sorted(by_call.items(), key=lambda kv: -kv[1]):
        out[f"… in {label}"] = seconds
    out["… everything else (Python: headers, names, checks)"] = total - sum(by_call.values())
    return out


# -- report -------------------------------------------------------------------------------------------------------------


def _row(what: str, runs: list[Timing]) -> str:
    med = statistics.median
    return (f"| {what} | {med(t.wall for t in runs):.2f} | {med(t.cpu for t in runs):.2f} | "
            f"{', '.join(f'{t.wall:.2f}' for t in runs)} |")


def report(started: dt.datetime, layers: list[LayerBlob], capsa: list[Timing], copy: list[Timing],
           unpack: list[Timing], profile: dict[str, Any], parts: dict[str, float], entries: int, fs: str) -> str:
    peer = [Timing(c.wall + u.wall, c.cpu + u.cpu) for c, u in zip(copy, unpack, strict=True)]
    med = statistics.median
    ratio = med(t.wall for t in capsa) / med(t.wall for t in peer)
    cpu_ratio = med(t.cpu for t in capsa) / med(t.cpu for t in peer)
    total_gz = sum(la.size for la in layers) / 1e6
    total_tar = sum(la.tar_size for la in layers) / 1e6
    lines = [section_header("Image pull", started), ""]
    lines.append(f"Image: {len(layers)} gzip layers ({', '.join(la.name for la in layers)}), {total_gz:.0f} MB "
                 f"compressed, {total_tar:.0f} MB of tar, {sum(la.entries for la in layers):,} tar entries "
                 f"({entries:,} in umoci's rootfs), served by Debian's docker-registry on 127.0.0.1 (plain HTTP, "
                 "page cache warm). Runs alternate capsa / peer; each run writes to "
                 + ("a fresh journaled ext4 on a loop device (made and removed off the clock)"
                    if fs == "loop" else "/var/tmp (outputs deleted between runs, off the clock)") + ".")
    lines.append("")
    lines.append("| what | median wall s | median CPU s | runs, wall (s) |")
    lines.append("|---|---:|---:|---|")
    lines.append(_row("capsa `image pull` → committed snapshots (fresh daemon + CAPSA_HOME per run; CPU = daemon + CLI)",
                      capsa))
    lines.append(_row("`skopeo copy` + `umoci unpack` → bundle/rootfs", peer))
    lines.append(_row("… of which `skopeo copy docker://… oci:…`", copy))
    lines.append(_row("… of which `umoci unpack`", unpack))
    lines.append("")
    verdict = "met" if ratio <= 0.4 else "NOT met"
    lines.append(f"capsa / (skopeo + umoci) wall = **{ratio:.2f}×** (target ≤ 0.4×: {verdict}); "
                 f"CPU time {cpu_ratio:.2f}×.")
    lines.append("")
    lines.append("Commands of one run (PORT: the registry started by the script; WORK: its scratch dir):")
    lines.append("")
    lines.append("```")
    lines.append(f"capsa image pull 127.0.0.1:PORT/{REPO}:{TAG}   # a daemon started just before, on a fresh CAPSA_HOME")
    lines.append(f"skopeo --insecure-policy copy --quiet --src-tls-verify=false docker://127.0.0.1:PORT/{REPO}:{TAG} "
                 "oci:WORK/oci:big")
    lines.append("umoci unpack --image WORK/oci:big WORK/bundle")
    lines.append("```")
    lines.append("")
    phases = profile["phases"]
    fetches = profile["children"]["blob.fetch"]
    unpacks = profile["children"]["layer.unpack"]
    lines.append("Where one capsa pull's time goes (run 1, from the pull's own FSM events):")
    lines.append("")
    lines.append("| phase | wall s |")
    lines.append("|---|---:|")
    lines.append(f"| resolve (manifest + config) | {phases['resolve']:.2f} |")
    start = profile["start"]
    fetch_end = max(b for _, b in fetches) - start
    unpack_start = min(a for a, _ in unpacks) - start
    per_layer = ", ".join(f"{a - start:.2f}–{b - start:.2f}" for a, b in unpacks)
    lines.append(f"| fetch: start {len(fetches)} blob.fetch runs (download + sha256 in one pass, fsync, rename; "
                 f"the last blob is stored at {fetch_end:.2f} s) | {phases['fetch']:.2f} |")
    lines.append(f"| unpack: {len(unpacks)} layer.unpack runs, each as soon as its blob is stored, at most two at "
                 f"a time, into separate overlay snapshots (s from the pull's start: {per_layer}), then attach + "
                 f"commit bottom-up | {phases['unpack']:.2f} |")
    lines.append(f"| register | {phases['register']:.3f} |")
    lines.append(f"| overlap: unpacking started at {unpack_start:.2f} s, before the last blob was stored | "
                 f"{max(0.0, fetch_end - unpack_start):.2f} |")
    lines.append("")
    lines.append("The same pieces alone, on the same blobs, right after (each writer on a fresh filesystem of "
                 "the same kind):")
    lines.append("")
    lines.append("| component | s |")
    lines.append("|---|---:|")
    for name, seconds in parts.items():
        lines.append(f"| {name} | {seconds:.2f} |")
    lines.append("")
    pull_s = sum(phases.values())
    gunzip_s = min(v for k, v in parts.items() if k.startswith("gunzip"))
    open_s = parts.get("… in open(O_CREAT) of new files", 0.0)
    write_s = parts.get("… in write", 0.0)
    python_s = parts.get("… everything else (Python: headers, names, checks)", 0.0)
    apply_s = next(v for k, v in parts.items() if k.startswith("capsa apply_layer"))
    lines.append(
        f"Reading: this pull took {pull_s:.1f} s from its first event to its image record. Decompression alone "
        f"takes {gunzip_s:.1f} s on one core and runs on the unpacker's helper thread; with the pipeline, layers "
        f"unpack two at a time while later blobs still download. Of the unpacker's own thread ({apply_s:.1f} s "
        f"here, one layer after another), {100 * open_s / apply_s:.0f}% is open(2) creating files, "
        f"{100 * write_s / apply_s:.0f}% writing their data and {100 * python_s / apply_s:.0f}% Python's per-entry "
        "work (headers, names, checks). umoci spends most of its time in `unpack`, which besides extracting walks "
        "the whole rootfs and sha256-hashes every file into an mtree manifest (kept for `umoci repack`); skopeo "
        "only copies and verifies the compressed blobs.")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-doc", action="store_true", help="Print only; do not rewrite docs/BENCHMARKS.md.")
    parser.add_argument("--fs", choices=("loop", "disk"), default="loop",
                        help="Write each run's output to a fresh loop ext4 (default) or to /var/tmp itself.")
    parser.add_argument("--writeback", action="store_true",
                        help="Include syncfs of the output filesystem in both contenders' time.")
    args = parser.parse_args()
    for tool in ("skopeo", "umoci", "gzip", "tar"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found")
    started = dt.datetime.now(dt.UTC)
    print("command:", command_line(), flush=True)
    layout, layers, manifest = build_image(CACHE)
    work = scratch_dir("capsa-bench-pull-")
    try:
        with registry(work) as host:
            ref = f"{host}/{REPO}:{TAG}"
            timed(["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
                   f"oci:{layout}:big", f"docker://{ref}"])
            capsa: list[Timing] = []
            copy: list[Timing] = []
            unpack: list[Timing] = []
            profile: dict[str, Any] | None = None
            entries = 0
            for i in range(args.runs):
                order = ("capsa", "peer") if i % 2 == 0 else ("peer", "capsa")
                for who in order:
                    subprocess.run(["sync"], check=True)
                    if who == "capsa":
                        with fresh_fs(args.fs, work) as out:
                            timing, details = capsa_run(out, ref, manifest, profile is None, args.writeback)
                        profile = profile or details
                        capsa.append(timing)
                        print(f"run {i + 1}: capsa {timing.wall:.2f} s (CPU {timing.cpu:.2f} s)", flush=True)
                    else:
                        with fresh_fs(args.fs, work) as out:
                            c, u, entries = peer_run(out, ref, args.writeback)
                        copy.append(c)
                        unpack.append(u)
                        print(f"run {i + 1}: skopeo {c.wall:.2f} s + umoci {u.wall:.2f} s = {c.wall + u.wall:.2f} s"
                              f" (CPU {c.cpu + u.cpu:.2f} s)", flush=True)
            parts = components(layers, host, lambda: fresh_fs(args.fs, work))
        assert profile is not None
        text = report(started, layers, capsa, copy, unpack, profile, parts, entries, args.fs)
        print(text)
        if not args.no_doc:
            update_section("image-pull", text)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
