"""Unary latency under open streams: GetVersion while N log followers (and attached runs) are open.

Run (as root):  .venv/bin/python bench/bench_streams.py [--followers 0,100,500,800] [--attached 100] [--no-doc]

For each N: a fresh set of N ``StreamLogs(follow)`` calls (spread over the four role certificates,
so the per-client stream limit is not what is measured) on five long-running jobs, plus
``--attached`` attached runs (RunJob + StreamLogs follow of ``echo; sleep 3``) for the largest N;
then 200 sequential GetVersion calls from another client. Figures: GetVersion p50/p99, the
daemon's thread count and RSS with the streams open. The sync server this replaced answered
nothing at all beyond 64 open streams (its thread pool); see docs/adr/0011-api-streams-and-limits.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "load"))

from common import command_line, fmt_ms, running_daemon, scratch_dir, section_header, summary, update_section  # noqa: E402
from load_helpers import ROLES, aio_channel, rss_kib, threads_of  # noqa: E402

from capsa.api.gen.capsa.v1 import common_pb2  # noqa: E402
from capsa.api.gen.capsa.v1 import jobs_pb2 as pb  # noqa: E402
from capsa.api.gen.capsa.v1 import jobs_pb2_grpc as pb_grpc  # noqa: E402


async def _measure(home: Path, pid: int, targets: list[str], followers: int, attached: int) -> dict[str, float]:
    channels = {role: aio_channel(home, role) for role in ROLES}
    stubs = {role: pb_grpc.JobServiceStub(ch) for role, ch in channels.items()}
    calls = [stubs[ROLES[i % 4]].StreamLogs(pb.StreamLogsRequest(id=targets[i % len(targets)], follow=True))
             for i in range(followers)]
    await asyncio.gather(*(c.read() for c in calls))   # the first chunk: each stream is open

    async def attached_run(n: int) -> None:
        stub = stubs[("developer", "admin")[n % 2]]
        job = await stub.RunJob(pb.RunJobRequest(command=["sh", "-c", f"echo {n}; sleep 3"]), timeout=120)
        async for _ in stub.StreamLogs(pb.StreamLogsRequest(id=job.id, follow=True)):
            pass

    runs = [asyncio.create_task(attached_run(n)) for n in range(attached)]
    await asyncio.sleep(1.0)
    node = pb_grpc.NodeServiceStub(channels["reader"])
    latencies: list[float] = []
    threads = threads_of(pid)
    rss = rss_kib(pid)
    for _ in range(200):
        t0 = time.perf_counter()
        await node.GetVersion(common_pb2.Empty(), timeout=30)
        latencies.append(time.perf_counter() - t0)
        await asyncio.sleep(0.01)
    await asyncio.gather(*runs)
    for c in calls:
        c.cancel()
    for ch in channels.values():
        with contextlib.suppress(Exception):
            await ch.close()
    s = summary(latencies)
    return {"p50": s["p50"], "p99": s["p99"], "threads": threads, "rss_mib": rss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--followers", default="0,100,500,800")
    parser.add_argument("--attached", type=int, default=100)
    parser.add_argument("--no-doc", action="store_true", help="print only; do not rewrite docs/BENCHMARKS.md")
    args = parser.parse_args()
    counts = [int(n) for n in args.followers.split(",")]
    print(f"command: {command_line()}", flush=True)
    started = dt.datetime.now(dt.UTC)
    scratch = scratch_dir("capsa-bench-streams-")
    rows = ["| open followers | attached runs | GetVersion p50 ms | p99 ms | daemon threads | daemon RSS MiB |",
            "|---:|---:|---:|---:|---:|---:|"]
    try:
        with running_daemon(scratch / "home") as daemon, daemon.client("admin") as client:
            targets = [client.run_job(["sh", "-c", "echo start; sleep 600"]).id for _ in range(5)]
            for n in counts:
                attached = args.attached if n == max(counts) else 0
                got = asyncio.run(_measure(daemon.home, daemon.proc.pid, targets, n, attached))
                rows.append(f"| {n} | {attached} | {fmt_ms(got['p50'])} | {fmt_ms(got['p99'])} "
                            f"| {int(got['threads'])} | {got['rss_mib']:.0f} |")
                print(rows[-1], flush=True)
            for job_id in targets:
                client.stop_job(job_id, grace_seconds=1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    body = "\n".join([section_header("Unary latency under open streams", started), *rows, "",
                      "Target (issue 15): GetVersion p99 ≤ 100 ms with 500 followers and 100 attached runs."])
    print(body)
    if not args.no_doc:
        update_section("api-streams", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
