"""The floor for capturing a job's output through a pipe, on this machine.

Times three ways for a Python process to drain `dd if=/dev/zero bs=1M count=1024` from a 1 MiB pipe into a
file (read+write inline, a reader thread plus a writer thread, os.splice), against dd writing the file
itself. capsa's log pipeline (bench_logs.py) cannot beat the fastest of these.

    .venv/bin/python bench/bench_pipe_floor.py [--runs 3]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import queue
import statistics
import subprocess
import threading
import time
from pathlib import Path

F_SETPIPE_SZ = 1031
OUT = Path("/var/tmp/capsa-pipe-floor.out")
DD = ["dd", "if=/dev/zero", "bs=1M", "count=1024", "status=none"]


def drain(mode: str) -> float:
    r, w = os.pipe()
    fcntl.fcntl(r, F_SETPIPE_SZ, 1 << 20)
    out = os.open(OUT, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    start = time.perf_counter()
    proc = subprocess.Popen(DD, stdout=w)
    os.close(w)
    if mode == "thread":
        chunks: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

        def writer() -> None:
            while (chunk := chunks.get()) is not None:
                os.write(out, chunk)

        thread = threading.Thread(target=writer)
        thread.start()
        while chunk := os.read(r, 1 << 20):
            chunks.put(chunk)
        chunks.put(None)
        thread.join()
    elif mode == "splice":
        while os.splice(r, out, 1 << 20):
            pass
    else:
        while chunk := os.read(r, 1 << 20):
            os.write(out, chunk)
    proc.wait()
    elapsed = time.perf_counter() - start
    os.close(r)
    os.close(out)
    OUT.unlink()
    return elapsed


def dd_file() -> float:
    start = time.perf_counter()
    subprocess.run([*DD, f"of={OUT}"], check=True)
    elapsed = time.perf_counter() - start
    OUT.unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    base = statistics.median(dd_file() for _ in range(args.runs))
    print("| what | median s | × dd of=file |\n|---|---:|---:|")
    print(f"| dd of=file | {base:.3f} | 1.00 |")
    for mode in ("inline", "thread", "splice"):
        t = statistics.median(drain(mode) for _ in range(args.runs))
        print(f"| pipe → python ({mode}) → file | {t:.3f} | {t / base:.2f} |")


if __name__ == "__main__":
    main()
