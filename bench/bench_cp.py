"""`capsa cp` of one large file in and out of a running job, beside `cp` between the same disks.

Run (as root):  .venv/bin/python bench/bench_cp.py [--size-mib 1024] [--runs 3] [--no-doc]

Everything lives in one scratch directory (the daemon's home too), so `cp`, `capsa cp` in and
`capsa cp` out all read and write the same disk. The file is 1 MiB of random bytes repeated
(not sparse: every byte travels). Each figure is the wall time of the whole command (the CLI's
start, TLS, the tar stream, fsync-free writes like cp), best of ``--runs``, caches warm for all.
Every copy is checked byte-exact (sha256). Target (issue 10): capsa cp within 1.5x of cp.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-doc", action="store_true", help="print only; do not rewrite docs/BENCHMARKS.md")
    args = parser.parse_args()
    print(f"command: {command_line()}", flush=True)
    started = dt.datetime.now(dt.UTC)
    scratch = scratch_dir("capsa-bench-cp-")
    src = scratch / "big.bin"
    block = os.urandom(1 << 20)
    with open(src, "wb") as f:
        for _ in range(args.size_mib):
            f.write(block)
    want = _sha(src)
    times: dict[str, list[float]] = {"cp": [], "capsa cp in": [], "capsa cp out": []}
    try:
        with running_daemon(scratch / "home") as daemon, daemon.client("admin") as client:
            job = client.run_job(["/bin/sleep", "3600"]).id
            capsa = [sys.executable, "-m", "capsa", "--config", str(daemon.home / "client-admin.yaml"), "cp"]
            work = daemon.home / "jobs" / job / "work"
            for i in range(args.runs):
                dst = scratch / f"cp-{i}.bin"
                times["cp"].append(_timed(["cp", str(src), str(dst)]))
                dst.unlink()
                times["capsa cp in"].append(_timed([*capsa, str(src), f"{job}:/work/in-{i}.bin"], daemon.env))
                assert _sha(work / f"in-{i}.bin") == want, "cp in is not byte-exact"
                out = scratch / f"out-{i}.bin"
                times["capsa cp out"].append(_timed([*capsa, f"{job}:/work/in-{i}.bin", str(out)], daemon.env))
                assert _sha(out) == want, "cp out is not byte-exact"
                out.unlink()
                (work / f"in-{i}.bin").unlink()
            client.stop_job(job, grace_seconds=1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    base = min(times["cp"])
    rows = [f"| copy of {args.size_mib} MiB | best s | MiB/s | vs cp |", "|---|---:|---:|---:|"]
    for name, samples in times.items():
        best = min(samples)
        rows.append(f"| {name} | {best:.2f} | {args.size_mib / best:.0f} | {best / base:.2f}x |")
    body = "\n".join([section_header("capsa cp vs cp", started), *rows, "",
                      "Target (issue 10): capsa cp within 1.5x of cp between the same disks; byte-exact (sha256)."])
    print(body)
    if not args.no_doc:
        update_section("cp", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
