"""`capsa exec` start latency against `nsenter --all -t PID /bin/true`, in the same run.

Run (as root):  .venv/bin/python bench/bench_exec.py [--runs 200] [--no-doc]

One job (`sleep`) runs for the whole benchmark; each round execs /bin/true into it:
- daemon-side: ``ExecResult.start_latency_ns``, the supervisor's measure from the exec request's
  arrival to the command's exec (zygote fork, cgroup join, setns via pidfd into all seven
  namespaces, fork into the PID namespace, rlimits, caps, no_new_privs, seccomp, execve);
- Exec round trip: the client's wall time of the Exec RPC (gRPC + TLS + SQLite audit rows + exec
  + the process's run and reaping);
- ``nsenter --all -t PID /bin/true``: whole-command wall time (util-linux; joins the namespaces
  only — no cgroup, seccomp, capabilities or no_new_privs).
Series are interleaved run by run. Target: capsa daemon-side p50 ≤ 10 ms.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fmt_ms, running_daemon, scratch_dir, section_header, summary, update_section  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--no-doc", action="store_true", help="print only; do not update docs/BENCHMARKS.md")
    args = parser.parse_args()
    started = dt.datetime.now(dt.UTC)
    series: dict[str, list[float]] = {}
    nsenter = shutil.which("nsenter")
    scratch = scratch_dir("capsa-bench-exec-")
    try:
        with running_daemon(scratch / "home") as daemon:
            client = daemon.client()
            job = client.run_job(["/bin/sleep", "100000"])
            try:
                deadline = time.monotonic() + 30
                while client.get_job(job.id).state != "RUNNING" and time.monotonic() < deadline:
                    time.sleep(0.02)
                pid = client.get_job(job.id).pid
                for i in range(args.runs):
                    t0 = time.perf_counter()
                    result = client.exec_job(job.id, ["/bin/true"])
                    wall = time.perf_counter() - t0
                    if result.exit_code != 0:
                        raise RuntimeError(f"exec /bin/true exited {result.exit_code}: {result.stderr!r}")
                    series.setdefault("capsa exec daemon-side (start_latency_ns)", []).append(
                        result.start_latency_ns / 1e9)
                    series.setdefault("capsa Exec RPC round trip", []).append(wall)
                    if nsenter:
                        t0 = time.perf_counter()
                        subprocess.run([nsenter, "--all", "-t", str(pid), "/bin/true"], check=True)
                        series.setdefault("nsenter --all -t PID /bin/true (wall)", []).append(
                            time.perf_counter() - t0)
                    if (i + 1) % 50 == 0:
                        print(f"  {i + 1}/{args.runs} runs", flush=True)
            finally:
                client.stop_job(job.id)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    stats = {name: summary(values) for name, values in series.items()}
    rows = ["| what | runs | p50 ms | p90 ms | p99 ms | mean ms |", "|---|---:|---:|---:|---:|---:|"]
    for name, s in stats.items():
        rows.append(f"| {name} | {int(s['n'])} | {fmt_ms(s['p50'])} | {fmt_ms(s['p90'])} | {fmt_ms(s['p99'])} "
                    f"| {fmt_ms(s['mean'])} |")
    p50 = stats["capsa exec daemon-side (start_latency_ns)"]["p50"]
    lines = [section_header("Exec start", started), *rows, "",
             f"capsa exec daemon-side p50 = **{fmt_ms(p50)} ms** (target ≤ 10 ms: {'met' if p50 <= 0.010 else 'NOT met'}).",
             "", "nsenter joins the namespaces only; capsa exec also joins the job's cgroups and applies its "
             "seccomp filter, capabilities, no_new_privs and user (docs/adr/0013-interactive-jobs-and-exec.md)."]
    if not nsenter:
        lines.append("nsenter was not found: not measured.")
    body = "\n".join(lines)
    print(body)
    if not args.no_doc:
        update_section("exec-start", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
