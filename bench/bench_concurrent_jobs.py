"""Memory per job: capsa's own processes with N concurrent `sleep 600` jobs, against N bubblewrap sandboxes.

Run (as root):  .venv/bin/python bench/bench_concurrent_jobs.py [--jobs 200] [--no-doc]

capsa: the sum of PSS (/proc/<pid>/smaps_rollup) over every long-lived capsa process — the daemon,
the supervisor and its zygote — with 0 jobs (after one warm-up job, so lazily loaded code is counted
in the baseline), then with N running ``sleep 600`` jobs. Per job = (with N − baseline) / N. The
jobs' own processes (the sleeps) are the user's and are not counted; the script checks that no other
capsa process exists per job. All jobs are removed afterwards.

Peer (same run): N ``bwrap --ro-bind / / --proc /proc --dev /dev --unshare-all sleep 600`` sandboxes;
per sandbox = the PSS of its bwrap processes (bwrap stays resident as the sandbox's parent and init).
Target: capsa ≤ 1 MiB per job.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    children,
    command_line,
    pss_kib,
    running_daemon,
    scratch_dir,
    section_header,
    update_section,
    uss_kib,
)


def _capsa_pss(pids: dict[str, int]) -> dict[str, int]:
    return {name: pss_kib(pid) for name, pid in pids.items()}


def _capsa_uss(pids: dict[str, int]) -> int:
    return sum(uss_kib(pid) for pid in pids.values())


def _bwrap_peer(n: int) -> tuple[float, int] | str:
    if shutil.which("bwrap") is None:
        return "bwrap not installed (apt-get install bubblewrap)"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen(
                ["bwrap", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--unshare-all",
                 "--die-with-parent", "sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        time.sleep(1.0)
        bwrap_pids: list[int] = []
        for proc in procs:
            if proc.poll() is not None:
                return f"bwrap sandbox exited early with {proc.returncode}"
            stack, seen = [proc.pid], set()
            while stack:  # the outer bwrap and its inner bwrap (the sandbox's PID 1), not the sleep
                pid = stack.pop()
                if pid in seen:
                    continue
                seen.add(pid)
                try:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    continue
                if comm == "bwrap":
                    bwrap_pids.append(pid)
                    stack.extend(children(pid))
        total = sum(pss_kib(pid) for pid in bwrap_pids)
        return total / n, len(bwrap_pids)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in procs:
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--no-doc", action="store_true", help="print only; do not rewrite docs/BENCHMARKS.md")
    args = parser.parse_args()
    print(f"command: {command_line()}", flush=True)
    started = dt.datetime.now(dt.UTC)
    n = args.jobs

    scratch = scratch_dir("capsa-bench-conc-")
    try:
        with running_daemon(scratch / "home") as daemon, daemon.client() as client:
            fresh = _capsa_pss(daemon.capsa_pids())
            warm = client.run_job(["/bin/true"])
            for _ in client.stream_logs(warm.id, follow=True):
                pass
            client.delete_job(warm.id)
            time.sleep(0.5)
            pids = daemon.capsa_pids()
            baseline = _capsa_pss(pids)
            baseline_uss = _capsa_uss(pids)

            ids: list[str] = []
            t0 = time.perf_counter()
            try:
                for _ in range(n):
                    ids.append(client.run_job(["sleep", "600"]).id)
                start_s = time.perf_counter() - t0
                running = [j for j in client.list_jobs() if j.state == "RUNNING"]
                if len(running) != n:
                    raise RuntimeError(f"{len(running)} of {n} jobs are running")
                time.sleep(1.0)
                loaded = _capsa_pss(pids)
                loaded_uss = _capsa_uss(pids)
                extra = [p for p in daemon.capsa_pids().values() if p not in pids.values()]
                sup_children = children(pids["supervisor"])
                sleeps = sum(1 for c in sup_children if Path(f"/proc/{c}/comm").read_text().strip() == "sleep")
                job_pss = sum(pss_kib(c) for c in sup_children if c not in pids.values()) / n
            finally:
                t1 = time.perf_counter()
                for job_id in ids:
                    client.delete_job(job_id, force=True)
                cleanup_s = time.perf_counter() - t1
            left = client.list_jobs(all=True)
            if left:
                raise RuntimeError(f"{len(left)} jobs left after clean-up")
        peer = _bwrap_peer(n)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    base_total, loaded_total = sum(baseline.values()), sum(loaded.values())
    per_job_kib = (loaded_total - base_total) / n
    rows = ["| capsa process | fresh daemon KiB | 0 jobs (warm) KiB | " + f"{n} jobs KiB | per job KiB |",
            "|---|---:|---:|---:|---:|"]
    for name in baseline:
        rows.append(f"| {name} | {fresh.get(name, 0)} | {baseline[name]} | {loaded[name]} | "
                    f"{(loaded[name] - baseline[name]) / n:.1f} |")
    rows.append(f"| **all capsa processes** | {sum(fresh.values())} | {base_total} | {loaded_total} | "
                f"**{per_job_kib:.1f}** |")
    per_job_uss = (loaded_uss - baseline_uss) / n
    rows.append(f"| all capsa processes, USS (private pages only) | | {baseline_uss} | {loaded_uss} | "
                f"{per_job_uss:.1f} |")
    lines = [section_header(f"{n} concurrent sleeping jobs: memory", started), *rows, ""]
    verdict = "met" if max(per_job_kib, (loaded_uss - baseline_uss) / n) <= 1024 else "NOT met"
    lines.append(f"capsa: **{per_job_kib / 1024:.3f} MiB per job** by PSS, {per_job_uss / 1024:.3f} MiB by USS "
                 f"(target ≤ 1 MiB: {verdict}). "
                 f"Extra capsa processes per job: {len(extra)} (the {sleeps} `sleep` processes are the jobs "
                 f"themselves, {job_pss:.0f} KiB PSS each, not counted). Starting the {n} jobs took {start_s:.1f} s, "
                 f"removing them {cleanup_s:.1f} s.")
    if isinstance(peer, tuple):
        lines.append(f"Peer: `bwrap … --unshare-all sleep 600` ×{n}: **{peer[0] / 1024:.3f} MiB per sandbox** "
                     f"({peer[1]} resident bwrap processes).")
    else:
        lines.append(f"Peer not measured: {peer}.")
    lines.append("")
    lines.append("PSS counts shared pages once across their users, so forked processes (the zygote shares most "
                 "of the supervisor's pages) are not double-counted; it also lowers capsa's share of libc pages "
                 "once the jobs map them too, which is why USS (pages only capsa maps) is shown as well and the "
                 "verdict takes the larger. Kernel memory (pipes, cgroups, namespaces) is not in PSS or USS for "
                 "any of the contenders.")
    body = "\n".join(lines)
    print(body)
    if not args.no_doc:
        update_section("concurrent-jobs", body)
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
