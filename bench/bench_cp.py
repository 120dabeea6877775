"""`capsa cp` of one large file in and out of a running job, beside `cp` between the same disks.

Run (as root):  .venv/bin/python bench/bench_cp.py [--size-mib 1024] [--runs 3] [--no-doc]

Everything lives in one scratch directory (the daemon's home too), so `cp`, `capsa cp` in and
`capsa cp` out all read and write the same disk. The file is 1 MiB of random bytes repeated
(not sparse: every byte travels). Each figure is the wall time of the whole command (the CLI's
start, TLS, the copy, fsync-free writes like cp), best of ``--runs``, caches warm for all, for
both paths of capsa cp: the local fast path (descriptors passed over the daemon's root-only
socket, copied with copy_file_range) and the stream (``--no-fast``: bytes through gRPC+TLS, as a
remote client gets). A second file, sparse (``--size-mib`` apparent, two 1 MiB data extents),
measures that holes are kept (blocks allocated after each copy). Every copy is checked
byte-exact (sha256). Target (issue 10): capsa cp within 1.5x of cp.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, running_daemon, scratch_dir, section_header, update_section  # noqa: E402


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def _timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return time.perf_counter() - t0


def _sparse(path: Path, size_mib: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
        for where in (1 << 20, (size_mib // 2) << 20):
            f.seek(where)
            f.write(os.urandom(1 << 20))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-doc", action="store_true", help="print only; do not rewrite docs/BENCHMARKS.md")
    args = parser.parse_args()
    print(f"command: {command_line()}", flush=True)
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    scratch = scratch_dir("capsa-bench-cp-")
    src = scratch / "big.bin"
    block = os.urandom(1 << 20)
    with open(src, "wb") as f:
        for _ in range(args.size_mib):
            f.write(block)
    sparse = scratch / "sparse.img"
    _sparse(sparse, args.size_mib)
    empty = scratch / "empty"
    empty.write_bytes(b"")
    want = {src.name: _sha(src), sparse.name: _sha(sparse), empty.name: _sha(empty)}
    times: dict[str, list[float]] = {}
    blocks: dict[str, int] = {"source": os.stat(sparse).st_blocks}
    try:
        with running_daemon(scratch / "home") as daemon, daemon.client("admin") as client:
            job = client.run_job(["/bin/sleep", "3600"]).id
            capsa = [sys.executable, "-m", "capsa", "--config", str(daemon.home / "client-admin.yaml"), "cp"]
            work = daemon.home / "jobs" / job / "work"
            for i in range(args.runs):
                for file in (src, sparse, empty):
                    label = {src: "", sparse: "sparse ", empty: "empty "}[file]
                    dst = scratch / f"cp-{i}.bin"
                    times.setdefault(f"{label}cp", []).append(_timed(["cp", str(file), str(dst)]))
                    if file is sparse:
                        blocks["cp"] = os.stat(dst).st_blocks
                    dst.unlink()
                    for path, flags in (("fast path", []), ("stream", ["--no-fast"])):
                        inside = work / f"in-{i}.bin"
                        times.setdefault(f"{label}capsa cp in ({path})", []).append(
                            _timed([*capsa, *flags, str(file), f"{job}:/work/{inside.name}"], daemon.env))
                        assert _sha(inside) == want[file.name], f"cp in ({path}) is not byte-exact"
                        if file is sparse:
                            blocks[f"in ({path})"] = os.stat(inside).st_blocks
                        out = scratch / f"out-{i}.bin"
                        times.setdefault(f"{label}capsa cp out ({path})", []).append(
                            _timed([*capsa, *flags, f"{job}:/work/{inside.name}", str(out)], daemon.env))
                        assert _sha(out) == want[file.name], f"cp out ({path}) is not byte-exact"
                        if file is sparse:
                            blocks[f"out ({path})"] = os.stat(out).st_blocks
                        out.unlink()
                        inside.unlink()
            client.stop_job(job, grace_seconds=1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load_after = os.getloadavg()
    rows = [f"| copy of {args.size_mib} MiB | best s | MiB/s | vs cp | less the empty file's time | vs cp |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, samples in times.items():
        if name.startswith("empty"):
            continue
        kind = "sparse " if name.startswith("sparse") else ""
        base, best = min(times[f"{kind}cp"]), min(samples)
        # The same command on an empty file: the fixed cost (CLI start, TLS, RPCs) without the copy.
        fixed = min(times["empty " + name.removeprefix(kind)])
        net = max(best - fixed, 1e-3)
        net_base = max(base - min(times["empty cp"]), 1e-3)
        rows.append(f"| {name} | {best:.3f} | {args.size_mib / best:.0f} | {best / base:.2f}x | {net:.3f}"
                    f" | {net / net_base:.2f}x |")
    fixed_row = ", ".join(f"{name.removeprefix('empty ')} {min(s):.3f} s" for name, s in times.items()
                          if name.startswith("empty"))
    kib = ", ".join(f"{name} {n // 2} KiB" for name, n in blocks.items())
    body = "\n".join([
        section_header("capsa cp vs cp", started), *rows, "",
        f"Load average (1/5/15 min) before {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f},"
        f" after {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f}; best of {args.runs} runs.",
        f"The same commands on an empty file (the fixed cost: CLI start-up, TLS, RPCs): {fixed_row}.",
        f"Sparse file ({args.size_mib} MiB apparent, two 1 MiB data extents), space allocated after the"
        f" last copy (holes kept when it stays ~2 MiB): {kib}.",
        "Fast path: root client on the daemon's host, descriptors over the daemon's socket, copy_file_range;"
        " stream: `--no-fast`, bytes through gRPC+TLS as a remote client gets them.",
        "Target (issue 10): capsa cp within 1.5x of cp between the same disks; byte-exact (sha256)."])
    print(body)
    if not args.no_doc:
        update_section("cp", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
