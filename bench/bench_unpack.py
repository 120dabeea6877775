#!/usr/bin/env python3
"""Benchmark capsa's layer unpacker against GNU ``tar -x`` on the same tar.

    sudo .venv/bin/python bench/bench_unpack.py [--runs 3] [--fs loop,disk,tmpfs] [--compressed]

Builds (once, cached under ``/var/tmp/capsa-bench``) an uncompressed tar of about
1 GB / 60k entries from the host's Python and shared files, then alternates
``tar -xf`` and :func:`capsa.images.unpack.apply_layer` into fresh directories,
``--runs`` times each, and prints a markdown table of wall time and CPU time
(user+sys, which a loaded machine distorts least) with medians. The tar is
always on the same filesystem as the output, page cache warm.

Filesystems: ``loop`` (default) is a fresh journaled ext4 on a loop device made
for the run (what a production host has, free of other users' churn), ``disk``
the directory itself, ``tmpfs`` /dev/shm (no disk cost at all: the harshest
view of per-entry CPU overhead). ``--compressed`` adds gzip and zstd layers
(``tar -xzf`` / ``tar --zstd -xf``). Outputs are deleted after each pair, except on ``disk``:
ext4 without a journal (as on some VMs) skips recently freed inodes for
minutes, which would slow whichever run came next. The trees of the first pair
are compared (names, types, modes, owners, sizes, mtimes, link targets).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from capsa.images.unpack import UnpackLimits, apply_layer, verify_layout

CACHE = Path("/var/tmp/capsa-bench")
TMPFS = Path("/dev/shm/capsa-bench")
SOURCES = ["usr/lib/python3", "usr/lib/python3.11", "usr/share", "usr/include", "usr/lib/gcc"]
LIMITS = UnpackLimits(max_entries=1_000_000, max_total_bytes=64 << 30)


def build_tar(cache: Path) -> tuple[Path, list[str]]:
    tar = cache / "big.tar"
    sources = [s for s in SOURCES if (Path("/") / s).exists()]
    cmd = ["tar", "-C", "/", "-cf", str(tar), *sources]
    if not tar.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = tar.with_suffix(".tmp")
        subprocess.run([*cmd[:3], "-cf", str(tmp), *sources], check=True)
        tmp.rename(tar)
    return tar, cmd


@contextlib.contextmanager
def loop_ext4(cache: Path, size_bytes: int) -> Iterator[Path]:
    """A fresh journaled ext4 filesystem on a loop device, removed afterwards."""
    image, mnt = cache / "loop-ext4.img", cache / "loop-ext4"
    mnt.mkdir(parents=True, exist_ok=True)
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


def compressed(tar: Path, kind: str) -> Path:
    out = tar.with_suffix(".tar.gz" if kind == "gzip" else ".tar.zst")
    if not out.exists():
        tool = ["gzip", "-c", "-6"] if kind == "gzip" else ["zstd", "-q", "-c", "-3", "-T0"]
        with open(out.with_suffix(".tmp"), "wb") as sink:
            subprocess.run([*tool, str(tar)], stdout=sink, check=True)
        out.with_suffix(".tmp").rename(out)
    return out


def cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_tar(layer: Path, dest: Path, kind: str) -> tuple[float, float]:
    flags = {"none": ["-xf"], "gzip": ["-xzf"], "zstd": ["--zstd", "-xf"]}[kind]
    before, start = cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(["tar", "-C", str(dest), *flags, str(layer)], check=True)
    return time.perf_counter() - start, cpu(resource.RUSAGE_CHILDREN) - before


def run_apply(layer: Path, dest: Path) -> tuple[tuple[float, float], tuple[float, float]]:
    """apply_layer, then verify_layout on the result, as every pull does: (apply, verify) (wall, CPU)."""
    before, start = cpu(resource.RUSAGE_SELF), time.perf_counter()
    apply_layer(layer, dest, limits=LIMITS)
    mid_cpu, mid = cpu(resource.RUSAGE_SELF), time.perf_counter()
    verify_layout(dest)
    end_cpu, end = cpu(resource.RUSAGE_SELF), time.perf_counter()
    return (mid - start, mid_cpu - before), (end - mid, end_cpu - mid_cpu)


APPLY, VERIFY, BOTH = "apply_layer", "… verify_layout after it", "apply_layer + verify_layout (a pull's unpack)"


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    tree: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            link = os.readlink(path) if path.is_symlink() else None
            size = st.st_size if not path.is_dir() else 0
            tree[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns, link)
    return tree


def compare(a: Path, b: Path, members: set[str]) -> str:
    left, right = snapshot(a), snapshot(b)
    for tree in (left, right):  # parents implied by the archive get "now" as mtime from both tools
        for name in tree.keys() - members:
            tree[name] = tree[name][:4] + tree[name][5:]
    if left == right:
        return f"identical ({len(left)} entries: names, types, modes, owners, sizes, mtimes, link targets)"
    diff = sorted(k for k in left.keys() | right.keys() if left.get(k) != right.get(k))
    return f"DIFFERENT in {len(diff)} entries, e.g. {diff[:5]}"


def bench(layer: Path, work: Path, kind: str, runs: int, dests: list[Path], members: set[str], *,
          keep: bool) -> dict[str, list[tuple[float, float]]]:
    """Alternate the tools; ``keep`` leaves outputs in place (deleted by the caller)."""
    results: dict[str, list[tuple[float, float]]] = {"GNU tar": [], APPLY: [], VERIFY: [], BOTH: []}
    for i in range(runs):
        pair = []
        # alternate who goes first, and start each run with no dirty pages from the previous one
        order = ("GNU tar", "apply_layer") if i % 2 == 0 else ("apply_layer", "GNU tar")
        for tool in order:
            dest = work / f"{kind}-{'tar' if tool == 'GNU tar' else 'apply'}-{i}"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            dests.append(dest)
            pair.append(dest)
            subprocess.run(["sync"], check=True)
            if tool == "GNU tar":
                results[tool].append(run_tar(layer, dest, kind))
            else:
                applied, verified = run_apply(layer, dest)
                results[APPLY].append(applied)
                results[VERIFY].append(verified)
                results[BOTH].append((applied[0] + verified[0], applied[1] + verified[1]))
        pair.sort()  # [apply's tree, tar's tree], by name
        if i == 0:
            print(f"\n{kind}: result trees {compare(pair[0], pair[1], members)}")
        if not keep:
            for dest in pair:
                shutil.rmtree(dest)
            subprocess.run(["sync"], check=True)  # no writeback of this pair during the next one
    return results


def table(fs: str, kind: str, layer: Path, results: dict[str, list[tuple[float, float]]]) -> None:
    tar_wall = statistics.median(w for w, _ in results["GNU tar"])
    tar_cpu = statistics.median(c for _, c in results["GNU tar"])
    size = layer.stat().st_size / 1e6
    print(f"\n### {fs}, {kind} layer ({layer.name}, {size:.0f} MB)\n")
    print("| tool | wall per run (s) | median wall (s) | median CPU user+sys (s) | wall vs tar | CPU vs tar |")
    print("|---|---|---|---|---|---|")
    for tool, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        used = statistics.median(c for _, c in runs)
        per_run = ", ".join(f"{w:.2f}" for w, _ in runs)
        print(f"| {tool} | {per_run} | {wall:.2f} | {used:.2f} | {wall / tar_wall:.2f}x | {used / tar_cpu:.2f}x |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fs", default="loop", help="comma-separated: loop, disk, tmpfs (default loop)")
    parser.add_argument("--compressed", action="store_true", help="also gzip and zstd layers")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (tar -x and apply_layer both restore ownership)", file=sys.stderr)
        return 2
    tar, cmd = build_tar(CACHE)
    listing = subprocess.run(["tar", "-tf", str(tar)], check=True, capture_output=True, text=True).stdout
    members = {line.rstrip("/") for line in listing.splitlines()}
    print(f"test tar: {tar} ({tar.stat().st_size / 1e6:.0f} MB, {len(members)} entries), built with:\n    {' '.join(cmd)}")
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; {sys.version.split()[0]}")
    kinds = ["none"] + (["gzip", "zstd"] if args.compressed and shutil.which("zstd") else
                        ["gzip"] if args.compressed else [])
    for fs in args.fs.split(","):
        with contextlib.ExitStack() as stack:
            if fs == "loop":
                place = stack.enter_context(loop_ext4(CACHE, 4 * tar.stat().st_size + (1 << 30)))
            elif fs == "tmpfs":
                place = TMPFS
                place.mkdir(parents=True, exist_ok=True)
                stack.callback(shutil.rmtree, place)
            elif fs == "disk":
                place = CACHE
            else:
                parser.error(f"unknown filesystem {fs!r}")
            local = tar
            if place != CACHE:
                local = place / tar.name
                shutil.copyfile(tar, local)  # the tar on the same filesystem as the output
            for kind in kinds:
                layer = local if kind == "none" else compressed(tar, kind)
                subprocess.run(["cat", str(layer)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
                dests: list[Path] = []
                try:
                    results = bench(layer, place / "runs", kind, args.runs, dests, members, keep=fs == "disk")
                finally:
                    for dest in dests:
                        shutil.rmtree(dest, ignore_errors=True)
                table({"loop": "ext4 on a loop device", "tmpfs": "tmpfs", "disk": f"{CACHE}"}[fs], kind,
                      layer, results)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
