"""The dashboard under load: the jobs page with 5,000 jobs in the database, and a job's log view while
the job writes 10 MB/s. Optionally takes the screenshots of docs/dashboard.md.

Run (as root):  .venv/bin/python bench/bench_web.py [--jobs 5000] [--requests 40] [--log-seconds 8]
                [--screenshots docs/img] [--doc]

Jobs page: the daemon's ``jobs`` table is given ``--jobs`` ended jobs straight through SQLite (WAL,
while the daemon runs; running that many real jobs would take minutes and measure the supervisor,
not the page). ``capsa web`` then serves ``/n/default/jobs`` with a
mix of pages, sorts and filters; the figure is the server-side time the app reports in its
``Server-Timing`` header (routing, ListJobs cache, filter, sort, page, template), plus the wall time
seen by the HTTP client. The first request also pays the one ListJobs RPC of all jobs; it is
reported apart. Target: ≤ 300 ms server-side.

Log view: a job writes 10 MB/s of numbered lines to stdout for ``--log-seconds``; headless Chromium
shows its job page throughout. Reported: bytes the page received against bytes written (must be
equal: windowing drops lines from the view, never from the stream), how long after the job ended the
page had everything, and the longest gap between two animation frames while it streamed (a frozen
tab shows as a gap of seconds). ``--doc`` rewrites the figures section of docs/dashboard.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sqlite3
import statistics
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests" / "e2e" / "web"))

import httpx  # noqa: E402
from common import command_line, machine_summary, running_daemon, scratch_dir  # noqa: E402
from web_helpers import (  # noqa: E402
    WebProcess,
    browser_missing,
    chromium,
    diamond_yaml,
    sign_in,
    wait_for,
    web_process,
)

from capsa.cli.capsules import tar_chunks  # noqa: E402

DOC = ROOT / "docs" / "dashboard.md"
STATES = ("COMPLETED", "COMPLETED", "COMPLETED", "FAILED", "STOPPED", "TIMEOUT")
IMAGES = ("", "", "127.0.0.1:5000/team/app:1.4", "127.0.0.1:5000/ml/train:2", "busybox:1.36")


def seed_jobs(db: Path, count: int) -> None:
    now = time.time_ns()
    rows = []
    for i in range(count):
        state = STATES[i % len(STATES)]
        created = now - (count - i) * 1_000_000_000
        rows.append((uuid.uuid4().hex, f"batch-{i // 100}/task-{i}", json.dumps(["/bin/sh", "-c", f"process --shard {i}"]),
                     state, created, created + 5_000_000, created + 5_000_000 + (i % 97) * 10_000_000,
                     0 if state == "COMPLETED" else 1, IMAGES[i % len(IMAGES)], f"job{i}"))
    with sqlite3.connect(db, timeout=30) as conn:   # WAL: the running daemon keeps working meanwhile
        conn.executemany("INSERT INTO jobs(id, name, command, state, created_ns, started_ns, ended_ns, exit_code, image,"
                         " hostname) VALUES(?,?,?,?,?,?,?,?,?,?)", rows)


def _server_ms(response: httpx.Response) -> float:
    timing = response.headers["server-timing"]
    return float(timing.split("dur=")[1])


def bench_jobs_page(web: WebProcess, requests: int) -> dict[str, Any]:
    client = httpx.Client(base_url=web.base, timeout=60)
    client.get(web.new_login_url())
    t0 = time.perf_counter()
    first = client.get("/n/default/jobs")
    cold_wall = (time.perf_counter() - t0) * 1000
    assert first.status_code == 200, first.text[:300]
    queries = ["", "?page=7", "?sort=name&order=asc", "?state=FAILED", "?name=task-49", "?image=ml&per_page=200",
               "?sort=duration&page=20", "?state=COMPLETED&sort=state&per_page=100", "?command=shard+12", "?page=100"]
    server, wall = [], []
    for i in range(requests):
        t0 = time.perf_counter()
        response = client.get("/n/default/jobs" + queries[i % len(queries)], headers={"HX-Request": "true"}
                              if i % 2 else {})
        wall.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200
        server.append(_server_ms(response))
        time.sleep(0.05)
    server.sort()
    return {"cold_server_ms": _server_ms(first), "cold_wall_ms": cold_wall,
            "median_ms": statistics.median(server), "p95_ms": server[int(0.95 * (len(server) - 1))],
            "max_ms": server[-1], "median_wall_ms": statistics.median(wall), "requests": requests}


LOG_WRITER = textwrap.dedent("""\
    import os, sys, time
    rate, seconds = 10 * 1000 * 1000, float(sys.argv[1])
    line = 0
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds:
        block = []
        for _ in range(1000):
            line += 1
            block.append(f"{line:09d} " + "x" * 89 + "\\n")
        data = "".join(block).encode()
        os.write(1, data)
        sent += len(data)
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    print(f"wrote {sent} bytes in {line} lines", file=sys.stderr)
    """)

FRAME_MONITOR = """
window.__gaps = {max: 0, last: performance.now(), frames: 0};
(function tick(now) { const g = window.__gaps; g.max = Math.max(g.max, now - g.last); g.last = now; g.frames++;
                      requestAnimationFrame(tick); })(performance.now());
"""


def bench_log_view(daemon: Any, web: WebProcess, driver: Any, seconds: float) -> dict[str, Any]:
    with daemon.client("developer") as client:
        job = client.run_job(["python3", "-c", LOG_WRITER, str(seconds)], name="log-firehose")
        sign_in(driver, web, f"/n/default/jobs/{job.id}")
        driver.execute_script(FRAME_MONITOR)
        wait_for(lambda: client.get_job(job.id).ended, timeout=seconds + 60, interval=0.2, what="the writer to end")
        ended_at = time.monotonic()
        written = sum(len(c.data) for c in client.stream_logs(job.id))   # both streams: the page shows both
    wait_for(lambda: driver.execute_script("return window.capsaLogs.stats.lastSeq > 0 && "
                                           "document.getElementById('log-status').textContent.startsWith('job ended')"),
             timeout=120, interval=0.1, what="the page to receive the whole log")
    caught_up = time.monotonic() - ended_at
    stats = driver.execute_script("return window.capsaLogs.stats;")
    gaps = driver.execute_script("return window.__gaps;")
    shown = len(driver.execute_script("return document.getElementById('logs').textContent;"))
    return {"written": written, "received_chars": stats["chars"], "gaps": stats["gaps"], "dups": stats["dups"],
            "shown_chars": shown, "caught_up_s": caught_up, "max_frame_gap_ms": gaps["max"], "frames": gaps["frames"],
            "seconds": seconds}


def screenshots(daemon: Any, web: WebProcess, driver: Any, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    taken = []
    grow = ("import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\nb=[]\n"
            "for i in range(60):\n    b.append(bytearray(3<<20)); print('allocated', 3*(i+1), 'MiB', flush=True)\n"
            "    print('warn: step', i, file=sys.stderr, flush=True) if i % 7 == 0 else None; time.sleep(0.2)\n"
            "time.sleep(60)")
    files = out.parent / ".capsule-files"
    files.mkdir(exist_ok=True)
    (files / "README").write_text("example capsule for the dashboard screenshots\n")
    with daemon.client() as admin:
        for name, version, deps in (("dataset", "1.2.0", []), ("dataset", "2.0.0", []), ("tokenizer", "1.0.3", []),
                                    ("model", "3.0.0", ["dataset>=1.2,<2", "tokenizer~=1.0"])):
            admin.create_capsule(name, version, tar_chunks(files), dependencies=deps)
    shutil.rmtree(files)
    with daemon.client("developer") as client:
        job = client.run_job(["python3", "-c", grow], name="train-model", max_memory_mb=256, max_cpu=50,
                             capsules=["model@3.0.0"])
        workflow = client.submit_workflow(diamond_yaml(), source="diamond.yaml")
        sign_in(driver, web, "/n/default/")
        time.sleep(2.5)
        pages = [("dashboard-overview.png", "/n/default/", 0), ("dashboard-jobs.png", "/n/default/jobs", 0),
                 ("dashboard-job.png", f"/n/default/jobs/{job.id}", 9),
                 ("dashboard-workflow.png", f"/n/default/workflows/{workflow.id}", 3),
                 ("dashboard-capsules.png", "/n/default/capsules", 0)]
        for name, path, settle in pages:
            driver.set_window_size(1400, {"dashboard-job.png": 1750, "dashboard-overview.png": 1250}.get(name, 900))
            driver.get(web.base + path)
            time.sleep(1.5 + settle)
            if name == "dashboard-workflow.png":
                wait_for(lambda: driver.execute_script(
                    "return [...document.querySelectorAll('#dag g.node')].some(n => n.dataset.state === 'COMPLETED')"),
                    timeout=30, what="a completed node")
            driver.save_screenshot(str(out / name))
            taken.append(out / name)
        client.stop_job(job.id, grace_seconds=1)
    return taken


def write_doc(jobs: dict[str, Any], logs: dict[str, Any] | None, count: int, started: dt.datetime) -> None:
    lines = [f"- Command: `{command_line()}`", f"- Date: {started:%Y-%m-%d %H:%M} UTC",
             f"- Machine: {machine_summary()}", "",
             "| measure | value |", "|---|---|",
             f"| jobs in the database | {count} |",
             f"| jobs page, server-side, median / p95 / max of {jobs['requests']} | "
             f"{jobs['median_ms']:.1f} / {jobs['p95_ms']:.1f} / {jobs['max_ms']:.1f} ms |",
             f"| jobs page, wall time at the client, median | {jobs['median_wall_ms']:.1f} ms |",
             f"| first jobs page view (list prefetched when capsa web starts), server-side / wall | "
             f"{jobs['cold_server_ms']:.1f} / {jobs['cold_wall_ms']:.1f} ms |",
             f"| ListJobs(all) RPC of every job, at the client (refreshed in the background, at most every max(1 s, 3 × this)) | "
             f"{jobs['rpc_ms']:.0f} ms |"]
    if logs:
        rate = logs["written"] / logs["seconds"] / 1e6
        lines += [f"| log view: bytes written in {logs['seconds']:.0f} s ({rate:.1f} MB/s reached; target 10) / received "
                  "by the page | "
                  f"{logs['written']} / {logs['received_chars']} (gaps {logs['gaps']}, duplicates {logs['dups']}) |",
                  f"| log view: characters kept in the page (window) | {logs['shown_chars']} |",
                  f"| log view: page complete after the job ended | {logs['caught_up_s']:.2f} s |",
                  f"| log view: frames drawn while streaming / longest gap between two | "
                  f"{logs['frames']} / {logs['max_frame_gap_ms']:.0f} ms |"]
    body = "\n".join(lines)
    start, end = "<!-- bench:web -->", "<!-- /bench:web -->"
    text = DOC.read_text()
    before, rest = text.split(start, 1)
    DOC.write_text(f"{before}{start}\n{body}\n{end}{rest.split(end, 1)[1]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--log-seconds", type=float, default=8.0)
    parser.add_argument("--screenshots", type=Path, default=None)
    parser.add_argument("--doc", action="store_true")
    args = parser.parse_args()
    started = dt.datetime.now(dt.UTC)
    scratch = scratch_dir("capsa-bench-web-")
    home = scratch / "home"
    try:
        with running_daemon(home) as daemon:
            seed_jobs(home / "capsa.db", args.jobs)
            with daemon.client() as client:
                t0 = time.perf_counter()
                listed = len(client.list_jobs(all=True))
                rpc_ms = (time.perf_counter() - t0) * 1000
            print(f"ListJobs(all) of {listed} jobs: {rpc_ms:.0f} ms")
            with web_process(home, "developer", scratch) as web:
                time.sleep(3.0)   # capsa web prefetches the job list at start (one ListJobs, ~1 s at 5,000)
                jobs = run_jobs_and_logs(daemon, web, args)
        if args.doc:
            write_doc({**jobs["jobs"], "rpc_ms": rpc_ms}, jobs["logs"], args.jobs, started)
        ok = jobs["jobs"]["median_ms"] <= 300 and (jobs["logs"] is None
                                                   or jobs["logs"]["written"] == jobs["logs"]["received_chars"])
        return 0 if ok else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_jobs_and_logs(daemon: Any, web: WebProcess, args: argparse.Namespace) -> dict[str, Any]:
    jobs = bench_jobs_page(web, args.requests)
    print(f"jobs page with {args.jobs} jobs: server median {jobs['median_ms']:.1f} ms, "
          f"p95 {jobs['p95_ms']:.1f} ms, max {jobs['max_ms']:.1f} ms; first view "
          f"{jobs['cold_server_ms']:.1f} ms server / {jobs['cold_wall_ms']:.1f} ms wall")
    logs = None
    reason = browser_missing()
    if reason:
        print(f"log view skipped: {reason}")
        return {"jobs": jobs, "logs": logs}
    with chromium() as driver:
        logs = bench_log_view(daemon, web, driver, args.log_seconds)
        print(f"log view: wrote {logs['written']} B, page received {logs['received_chars']} chars "
              f"(gaps {logs['gaps']}, dups {logs['dups']}), complete {logs['caught_up_s']:.2f} s after the "
              f"end, longest frame gap {logs['max_frame_gap_ms']:.0f} ms over {logs['frames']} frames")
        if args.screenshots:
            for path in screenshots(daemon, web, driver, args.screenshots):
                print(f"screenshot: {path}")
    return {"jobs": jobs, "logs": logs}


if __name__ == "__main__":
    sys.exit(main())
