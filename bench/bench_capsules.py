"""Capsule attach / swap / detach into a running job, against util-linux `nsenter` + `mount --bind` by hand.

Run (as root):  .venv/bin/python bench/bench_capsules.py [--runs 100] [--many 50] [--no-doc]

capsa, over --runs rounds on one running job (host userland, `sh -c 'while :; do sleep 1; done'`):
- attach, daemon-side: ``MountChange.latency_ns`` (AttachCapsule received -> the change recorded: resolve,
  SQLite lease, supervisor -> zygote -> open_tree/mount_setattr/setns/move_mount/setns back, event);
- attach, RPC round trip: the client's wall time of the AttachCapsule call (mTLS gRPC included);
- swap (v1 <-> v2, MOVE_MOUNT_BENEATH + unmount of the old top) and detach, the same two ways;
- then --many different capsules attached one after the other to one fresh job (each timed), and the
  job's own mountinfo checked to hold all of them.

The peer is what an operator would type: ``nsenter -t PID -m mount --mkdir --bind -o ro SRC TARGET``
(util-linux; the source must be visible in the job, so it is a copy under the job's /work), ``nsenter ...
mount --bind -o ro NEW TARGET`` over it for a "swap" (stacks, not atomic replacement), and ``nsenter ...
umount TARGET``. Each is the wall time of the whole command. capsa and the peer alternate round by round.
Target: capsa attach p50 <= 3 ms daemon-side (issue 9.8).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (  # noqa: E402
    command_line,
    fmt_ms,
    running_daemon,
    scratch_dir,
    section_header,
    summary,
    update_section,
)

from capsa.cli.capsules import tar_chunks  # noqa: E402
from capsa.runtime import mounts  # noqa: E402

LOOP = ["/bin/sh", "-c", "while :; do sleep 1; done"]


def _tree(root: Path, tag: str, files: int = 20) -> Path:
    for i in range(files):
        path = root / f"dir{i % 4}" / f"file{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{tag} {i}\n" * 64)
    return root


def _nsenter(pid: int, *argv: str) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(["nsenter", "-t", str(pid), "-m", *argv], stdin=subprocess.DEVNULL, capture_output=True)
    took = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"nsenter {' '.join(argv)} failed: {res.stderr.decode()[-300:]}")
    return took


def _timed(call: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = call()
    return time.perf_counter() - t0, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--many", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-doc", action="store_true", help="print only; do not rewrite docs/BENCHMARKS.md")
    args = parser.parse_args()
    print(f"command: {command_line()}", flush=True)
    started = dt.datetime.now(dt.UTC)
    if shutil.which("nsenter") is None:
        raise SystemExit("nsenter not found: apt-get install util-linux")
    series: dict[str, list[float]] = {}
    many: dict[str, float] = {}
    scratch = scratch_dir("capsa-bench-capsules-")

    def record(name: str, seconds: float) -> None:
        series.setdefault(name, []).append(seconds)

    try:
        with running_daemon(scratch / "home") as daemon, daemon.client() as client:
            for tag in ("v1", "v2"):
                client.create_capsule("bench", "1.0.0" if tag == "v1" else "2.0.0",
                                      tar_chunks(_tree(scratch / tag, tag)))
            job = client.run_job(LOOP)
            pid = client.get_job(job.id).pid
            work = daemon.home / "jobs" / job.id / "work"
            for tag in ("v1", "v2"):   # the peer's sources: copies the job can see, at /work/raw-v1, /work/raw-v2
                shutil.copytree(scratch / tag, work / f"raw-{tag}")

            def capsa_round(i: int, keep: bool) -> None:
                took, change = _timed(lambda: client.attach_capsule(job.id, "bench@1.0.0"))
                if keep:
                    record("capsa attach, daemon-side", change.latency_ns / 1e9)   # type: ignore[attr-defined]
                    record("capsa attach, RPC round trip", took)
                took, change = _timed(lambda: client.swap_capsule(job.id, "bench@2.0.0"))
                if keep:
                    record("capsa swap, daemon-side", change.latency_ns / 1e9)   # type: ignore[attr-defined]
                    record("capsa swap, RPC round trip", took)
                took, change = _timed(lambda: client.detach_capsule(job.id, "bench"))
                if keep:
                    record("capsa detach, daemon-side", change.latency_ns / 1e9)   # type: ignore[attr-defined]
                    record("capsa detach, RPC round trip", took)

            def raw_round(i: int, keep: bool) -> None:
                target = f"/capsules/raw{i}"
                attach = _nsenter(pid, "mount", "--mkdir", "--bind", "-o", "ro", "/work/raw-v1", target)
                over = _nsenter(pid, "mount", "--bind", "-o", "ro", "/work/raw-v2", target)
                unmount = _nsenter(pid, "umount", target) + _nsenter(pid, "umount", target)
                if keep:
                    record("nsenter + mount --mkdir --bind -o ro (attach)", attach)
                    record("nsenter + mount --bind -o ro over it (\"swap\")", over)
                    record("nsenter + umount, both layers (detach)", unmount)

            for i in range(args.warmup):
                capsa_round(i, keep=False)
                raw_round(-1 - i, keep=False)
            for i in range(args.runs):
                capsa_round(i, keep=True)
                raw_round(i, keep=True)
                if (i + 1) % 25 == 0:
                    print(f"  {i + 1}/{args.runs} rounds", flush=True)
            client.stop_job(job.id, grace_seconds=0.2)

            # --many capsules into one fresh job, and the same number of raw binds into another.
            for n in range(args.many):
                client.create_capsule(f"many{n:02d}", "1.0.0", tar_chunks(_tree(scratch / f"many{n}", f"m{n}", 2)))
            job = client.run_job(LOOP)
            pid = client.get_job(job.id).pid
            t_all = time.perf_counter()
            for n in range(args.many):
                took, change = _timed(lambda n=n: client.attach_capsule(job.id, f"many{n:02d}@1.0.0"))
                record(f"capsa attach #1..{args.many} into one job, daemon-side",
                       change.latency_ns / 1e9)   # type: ignore[attr-defined]
            many["capsa, all (RPC wall)"] = time.perf_counter() - t_all
            seen = [p for p in mounts.mounted_targets(pid, "/capsules") if p.startswith("/capsules/many")]
            if len(seen) != args.many:
                raise RuntimeError(f"the job sees {len(seen)} capsule mounts, expected {args.many}")
            client.stop_job(job.id, grace_seconds=0.2)
            raw_job = client.run_job(LOOP)
            raw_pid = client.get_job(raw_job.id).pid
            shutil.copytree(scratch / "v1", daemon.home / "jobs" / raw_job.id / "work" / "raw-v1")
            t_all = time.perf_counter()
            for n in range(args.many):
                record(f"nsenter + mount #1..{args.many} into one job",
                       _nsenter(raw_pid, "mount", "--mkdir", "--bind", "-o", "ro", "/work/raw-v1", f"/capsules/raw{n}"))
            many["nsenter + mount, all (wall)"] = time.perf_counter() - t_all
            client.stop_job(raw_job.id, grace_seconds=0.2)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    stats = {name: summary(values) for name, values in series.items()}
    rows = ["| what | runs | p50 ms | p90 ms | p99 ms | mean ms |", "|---|---:|---:|---:|---:|---:|"]
    for name, s in stats.items():
        rows.append(f"| {name} | {int(s['n'])} | {fmt_ms(s['p50'])} | {fmt_ms(s['p90'])} | {fmt_ms(s['p99'])} "
                    f"| {fmt_ms(s['mean'])} |")
    attach_p50 = stats["capsa attach, daemon-side"]["p50"]
    raw_p50 = stats["nsenter + mount --mkdir --bind -o ro (attach)"]["p50"]
    lines = [section_header("Capsules: live attach, swap, detach", started), *rows, "",
             f"{args.many} attachments to one job: capsa {many['capsa, all (RPC wall)'] * 1000:.0f} ms in all "
             f"(RPC wall, the job then holds all {args.many}); nsenter + mount "
             f"{many['nsenter + mount, all (wall)'] * 1000:.0f} ms.", "",
             f"capsa attach p50 daemon-side **{fmt_ms(attach_p50)} ms** (target ≤ 3 ms, issue 9.8: "
             f"{'met' if attach_p50 <= 0.003 else 'NOT met'}); {attach_p50 / raw_p50:.2f}× the p50 of nsenter + mount "
             "by hand, which records nothing, resolves no dependencies, follows symlinks in the target, and "
             "stacks instead of swapping.", "",
             "Daemon-side is `MountChange.latency_ns`, taken in `CapsuleManager` from the request until the "
             "change is recorded: job lookup, resolution, the SQLite lease, then daemon → supervisor (Unix "
             "socket) → zygote (SCM_RIGHTS: the job's pidfd), which clones and seals the tree, enters the job's "
             "mount namespace, moves the mount in and comes back (no helper process since issue 9.8) → replies "
             "back, then the job's state re-checked and the capsule event written. Roughly half of it is the "
             "daemon's own work; the rest is three process hand-offs, which is what grows on a loaded machine "
             "(see the load average above). The "
             "peer's figures are whole-command wall times of `nsenter` + util-linux `mount` (fork, exec, "
             "setns, bind, remount read-only)."]
    text = "\n".join(lines)
    print(text)
    if not args.no_doc:
        update_section("capsules", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
