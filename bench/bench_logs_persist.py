"""Micro-benchmark of capsa.logs alone: LogPersister write throughput, append latency, read_log throughput.

Run:  .venv/bin/python bench/bench_logs_persist.py [--dir /tmp] [--repeat 3] [--scale 1.0] [--json]

Each scenario appends the same chunk object repeatedly from the main thread (as
the supervisor's selector thread would after ``os.read``), then waits until
everything is persisted. Throughput = payload bytes / (first append ..
wait_persisted done), i.e. what the writer thread sustains to the page cache.
Page-cache numbers use ``fsync_on_close=False``; one extra scenario reports the
fsync'd finish. A baseline writes the same chunks with plain ``os.write`` into
one file (no headers, no CRC, no thread) on the same filesystem. The first pass
is a discarded warm-up: on fresh VM memory the first touch of page cache is
several times slower than later ones. Reported: best and median of --repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from capsa.logs import LogPersister, Stream, read_log

MiB = 1 << 20


@dataclass
class Result:
    scenario: str
    chunk_bytes: int
    jobs: int
    total_mib: float
    write_mb_s: float
    write_mb_s_median: float
    write_rec_s: float
    append_us_mean: float
    append_us_p99: float
    append_us_max: float
    read_mb_s: float
    read_rec_s: float
    raw_os_write_mb_s: float


def run_once(
    base: Path, chunk: int, total: int, jobs: int, fsync: bool
) -> tuple[float, float, float, float, float]:
    data = os.urandom(chunk)
    per_job = total // chunk // jobs
    dirs = [base / f"job{i}" for i in range(jobs)]
    lat: list[int] = []
    with LogPersister(fsync_on_close=fsync) as p:
        logs = [p.open(f"job{i}", d) for i, d in enumerate(dirs)]
        appends = [log.append for log in logs]
        clock = time.perf_counter_ns
        record = lat.append
        t0 = time.perf_counter()
        for _ in range(per_job):
            for append in appends:
                a = clock()
                append(Stream.STDOUT, data)
                record(clock() - a)
        t_app = time.perf_counter() - t0
        for log in logs:
            log.finish()
        for log in logs:
            log.wait_persisted()
        elapsed = time.perf_counter() - t0
    n = per_job * jobs
    t0 = time.perf_counter()
    got = 0
    for d in dirs:
        for c in read_log(d):
            got += len(c.data)
    read_s = time.perf_counter() - t0
    assert got == n * chunk, (got, n * chunk)
    for d in dirs:
        shutil.rmtree(d)
    lat.sort()
    return elapsed, t_app / n * 1e6, lat[len(lat) * 99 // 100] / 1e3, lat[-1] / 1e3, read_s, n


def raw_write(base: Path, chunk: int, total: int) -> float:
    data = os.urandom(chunk)
    path = base / "raw.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    t0 = time.perf_counter()
    for _ in range(total // chunk):
        os.write(fd, data)
    elapsed = time.perf_counter() - t0
    os.close(fd)
    path.unlink()
    return elapsed


def scenario(base: Path, name: str, chunk: int, total: int, jobs: int, fsync: bool, repeat: int) -> Result:
    run_once(base, chunk, min(total, 64 * MiB), jobs, fsync)  # warm-up
    runs = [run_once(base, chunk, total, jobs, fsync) for _ in range(repeat)]
    raws = [raw_write(base, chunk, total) for _ in range(repeat)]
    n = runs[0][5]
    nbytes = n * chunk
    write_s = sorted(r[0] for r in runs)
    read_s = sorted(r[4] for r in runs)
    return Result(
        scenario=name,
        chunk_bytes=chunk,
        jobs=jobs,
        total_mib=round(nbytes / MiB, 1),
        write_mb_s=round(nbytes / write_s[0] / 1e6),
        write_mb_s_median=round(nbytes / statistics.median(write_s) / 1e6),
        write_rec_s=round(n / write_s[0]),
        append_us_mean=round(statistics.median(r[1] for r in runs), 2),
        append_us_p99=round(statistics.median(r[2] for r in runs), 1),
        append_us_max=round(max(r[3] for r in runs), 1),
        read_mb_s=round(nbytes / read_s[0] / 1e6),
        read_rec_s=round(n / read_s[0]),
        raw_os_write_mb_s=round(nbytes / min(raws) / 1e6),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp", help="filesystem to write on (default /tmp)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply data volumes")
    ap.add_argument("--json", action="store_true", help="one JSON object per scenario instead of a table")
    args = ap.parse_args()

    def g(mib: float) -> int:
        return max(4 * MiB, int(mib * MiB * args.scale))

    scenarios = [
        ("1 job, 1 MiB chunks", MiB, g(1024), 1, False),
        ("1 job, 64 KiB chunks", 64 << 10, g(1024), 1, False),
        ("1 job, 4 KiB chunks", 4 << 10, g(256), 1, False),
        ("1 job, 256 B chunks", 256, g(32), 1, False),
        ("50 jobs, 1 MiB chunks", MiB, g(1000), 50, False),
        ("50 jobs, 4 KiB chunks", 4 << 10, g(200), 50, False),
        ("1 job, 1 MiB, fsync at finish", MiB, g(1024), 1, True),
    ]
    base = Path(tempfile.mkdtemp(prefix="capsa-bench-logs-", dir=args.dir))
    results = []
    try:
        for name, chunk, total, jobs, fsync in scenarios:
            r = scenario(base, name, chunk, total, jobs, fsync, args.repeat)
            results.append(r)
            if args.json:
                print(json.dumps(asdict(r)), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if not args.json:
        print(
            f"capsa.logs persister benchmark on {args.dir} (python {sys.version.split()[0]}, "
            f"{os.cpu_count()} cpus, best of {args.repeat}; median write in parentheses)"
        )
        hdr = f"{'scenario':32} {'MiB':>6} {'write MB/s':>17} {'rec/s':>9} {'append us':>10} {'p99 us':>7} {'max us':>8} "
        hdr += f"{'read MB/s':>9} {'rec/s':>9} {'raw write MB/s':>14}"
        print(hdr)
        for r in results:
            print(
                f"{r.scenario:32} {r.total_mib:>6.0f} {r.write_mb_s:>7} ({r.write_mb_s_median:>7}) "
                f"{r.write_rec_s:>9} {r.append_us_mean:>10.2f} {r.append_us_p99:>7.1f} {r.append_us_max:>8.0f} "
                f"{r.read_mb_s:>9} {r.read_rec_s:>9} {r.raw_os_write_mb_s:>14}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
