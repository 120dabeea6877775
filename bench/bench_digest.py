"""Streaming sha256 throughput of capsa against coreutils ``sha256sum``, same file, one run.

Rows (best of ``--runs``, page cache warm, so it measures hashing, not the disk):

* ``sha256sum FILE`` — the reference.
* ``capsa digest_file`` — what the content store uses to verify a blob
  (1 MiB ``readinto`` into one reused buffer, ``hashlib.sha256``).
* ``capsa ingest`` — the full download path minus the network: ``Writer.write``
  (hash + append to the ingest file in the same pass), ``commit`` (fsync, verify,
  rename). It writes the file once more, so it does more work than ``sha256sum``.

Run:  .venv/bin/python bench/bench_digest.py [--size-mib 1024] [--runs 3] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from capsa.images.content import ContentStore, digest_file
from capsa.state.db import Database


def _make_file(path: Path, size: int) -> None:
    chunk = os.urandom(64 * 1024 * 1024)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)


def _best(runs: int, fn: object) -> tuple[float, str]:
    best, result = float("inf"), ""
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    sha256sum = shutil.which("sha256sum")
    if sha256sum is None:
        print("sha256sum not found", file=sys.stderr)
        return 1
    size = args.size_mib * 1024 * 1024
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="capsa-bench-digest-") as tmp:
        work = Path(tmp)
        data = work / "blob"
        _make_file(data, size)
        digest_file(data)  # warm the page cache

        ref_s, ref_hex = _best(args.runs, lambda: subprocess.run(
            [sha256sum, str(data)], check=True, capture_output=True, text=True).stdout.split()[0])
        ours_s, ours = _best(args.runs, lambda: digest_file(data)[0].hex)
        assert ours == ref_hex, f"digests differ: {ours} != {ref_hex}"

        db = Database(work / "capsa.db")
        store = ContentStore(work / "content", db)
        run = [0]

        def ingest() -> str:
            run[0] += 1
            buf = bytearray(1024 * 1024)
            view = memoryview(buf)
            with store.writer(f"bench-{run[0]}", expected_size=size) as w, open(data, "rb", buffering=0) as f:
                while n := f.readinto(view):
                    w.write(view[:n])
                digest = w.commit(size).digest
            store.delete(digest)  # the next run must write it again, not dedupe
            return digest.hex

        ingest_s, ingest_hex = _best(args.runs, ingest)
        assert ingest_hex == ref_hex
        db.close()

    mib = size / (1024 * 1024)
    command = "cd /work/main && " + " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/bench_digest.py", *sys.argv[1:]])
    print(f"<!-- {command} -->")
    print("| benchmark | capsa | sha256sum | capsa throughput / sha256sum |")
    print("|---|---|---|---|")
    print(f"| streaming sha256 of {mib:.0f} MiB (digest_file, warm cache) | {ours_s:.3f} s ({mib / ours_s:.0f} MiB/s) "
          f"| {ref_s:.3f} s ({mib / ref_s:.0f} MiB/s) | {ref_s / ours_s:.2f}x |")
    print(f"| ingest = hash + write + fsync + rename of {mib:.0f} MiB | {ingest_s:.3f} s ({mib / ingest_s:.0f} MiB/s) "
          f"| {ref_s:.3f} s (hash only) | {ref_s / ingest_s:.2f}x |")
    print(f"\ncommand: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
