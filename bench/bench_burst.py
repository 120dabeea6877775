"""Supervisor-level start throughput under a burst, beside a loop of `runc run` in the same run.

Run (as root):  .venv/bin/python bench/bench_burst.py [--jobs 1000] [--threads 20] [--runc-jobs 100]

capsa: a real supervisor (``ensure_supervisor`` on a scratch home: real zygote, cgroups,
namespaces, pivot_root) receives ``--jobs`` starts of /bin/true on the host userland from
``--threads`` threads sharing one ``SupervisorClient`` (what the daemon's gRPC threads do), while
an event consumer forgets each exited job. Figures: jobs/s from the first start to the last
start's reply and to the last exit event; per-start round trip (``start()`` → reply at exec)
and the supervisor's own request→exec latency (``exec_latency_ns``); a sequential series of
single starts for the uncontended latency.

runc: ``runc run`` of /bin/true on a busybox-static OCI bundle, ``--runc-jobs`` times, first one
after the other, then from ``--threads`` threads (unique container ids). Its figure is the wall
time of the whole command, i.e. a start and the end of the container.

daemon (issue 15's scenario end to end): ``--daemon-jobs`` RunJob calls of /bin/true from
``--threads`` gRPC clients against a throwaway daemon; jobs/s, errors, and the final states
(every job must end COMPLETED with exit 0 — none FAILED at start, none lost).

Figures go to stdout (the lead copies them into docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import collections
import secrets
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    command_line,
    fmt_ms,
    machine_summary,
    runc_true_bundle,
    running_daemon,
    scratch_dir,
    summary,
)

from capsa.runtime.client import SupervisorClient, ensure_supervisor  # noqa: E402
from capsa.runtime.protocol import ExitEvent  # noqa: E402
from capsa.runtime.spec import JobSpec  # noqa: E402


def _spec(home: Path) -> JobSpec:
    job_id = secrets.token_hex(16)
    return JobSpec(job_id=job_id, argv=("/bin/true",), env={}, hostname=job_id[:12],
                   job_dir=str(home / "jobs" / job_id))


def _row(name: str, samples: list[float]) -> str:
    s = summary(samples)
    return (f"| {name} | {int(s['n'])} | {fmt_ms(s['p50'])} | {fmt_ms(s['p90'])} | {fmt_ms(s['p99'])} "
            f"| {fmt_ms(s['mean'])} |")


def _capsa_burst(client: SupervisorClient, home: Path, jobs: int, threads: int) -> dict[str, object]:
    exits = collections.Counter[str]()
    done = threading.Condition()
    last_exit = [0.0]

    def on_event(event: ExitEvent) -> None:
        client.forget(event.job.job_id)
        with done:
            exits[event.job.job_id] += 1
            last_exit[0] = time.perf_counter()
            done.notify_all()

    client.subscribe(on_event)
    round_trips: list[float] = []
    exec_latencies: list[float] = []
    failures: list[str] = []

    def one(_: int) -> None:
        t0 = time.perf_counter()
        try:
            rec = client.start(_spec(home))
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            return
        round_trips.append(time.perf_counter() - t0)
        exec_latencies.append(rec.exec_latency_ns / 1e9)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(jobs)))
    t_started = time.perf_counter() - t0
    with done:
        done.wait_for(lambda: len(exits) >= jobs - len(failures), timeout=120)
    t_exited = last_exit[0] - t0
    client.close()
    return {"started_s": t_started, "exited_s": t_exited, "round_trips": round_trips,
            "exec_latencies": exec_latencies, "failures": failures,
            "duplicates": sum(1 for n in exits.values() if n > 1), "exits": len(exits)}


def _daemon_burst(home: Path, jobs: int, threads: int) -> tuple[list[str], float, list[float], collections.Counter[str]]:
    errors: list[str] = []
    latencies: list[float] = []
    ids: list[str] = []
    with running_daemon(home) as daemon:
        local = threading.local()

        def one(_: int) -> None:
            if not hasattr(local, "client"):
                local.client = daemon.client()
            try:
                job = local.client.run_job(["/bin/true"])
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")
                return
            ids.append(job.id)
            latencies.append(job.start_latency_ns / 1e9)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(jobs)))
        took = time.perf_counter() - t0
        states: collections.Counter[str] = collections.Counter()
        with daemon.client() as client:
            deadline = time.monotonic() + 120
            while True:
                final = [client.get_job(job_id) for job_id in ids]
                if all(j.state not in ("PENDING", "RUNNING") for j in final) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            states.update(f"{j.state} exit {j.exit_code}" for j in final)
    return errors, took, latencies, states


def _runc_once(bundle: Path) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(["runc", "run", "--bundle", str(bundle), f"cb-burst-{secrets.token_hex(6)}"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if res.returncode != 0:
        raise RuntimeError(f"runc run failed ({res.returncode}): {res.stderr.decode()[-300:]}")
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--sequential", type=int, default=200, help="single starts, one after the other")
    parser.add_argument("--runc-jobs", type=int, default=100)
    parser.add_argument("--daemon-jobs", type=int, default=500, help="RunJob burst through a daemon (0: skip)")
    args = parser.parse_args()
    print(f"command: {command_line()}")
    print(f"machine: {machine_summary()}", flush=True)

    scratch = scratch_dir("capsa-bench-burst-")
    rows = ["| what | n | p50 ms | p90 ms | p99 ms | mean ms |", "|---|---:|---:|---:|---:|---:|"]
    lines: list[str] = []
    try:
        home = scratch / "home"
        client, _ = ensure_supervisor(home)
        try:
            for _ in range(20):   # warm the zygote and the page cache
                client.start(_spec(home))
            sequential: list[float] = []
            for _ in range(args.sequential):
                t0 = time.perf_counter()
                client.start(_spec(home))
                sequential.append(time.perf_counter() - t0)
            time.sleep(1)
            for rec in client.list():
                if rec.state == "exited":
                    client.forget(rec.job_id)
            burst = _capsa_burst(SupervisorClient(home), home, args.jobs, args.threads)
        finally:
            client.shutdown()
            client.close()
        rows.append(_row("capsa start(), sequential (client round trip to exec)", sequential))
        rows.append(_row(f"capsa start() in the burst, {args.threads} threads (round trip)",
                         burst["round_trips"]))  # type: ignore[arg-type]
        rows.append(_row("capsa request→exec inside the supervisor, burst", burst["exec_latencies"]))  # type: ignore[arg-type]
        n_ok = len(burst["round_trips"])  # type: ignore[arg-type]
        lines.append(f"capsa burst: {n_ok}/{args.jobs} starts ok from {args.threads} threads; "
                     f"{n_ok / burst['started_s']:.0f} starts/s (all started in {burst['started_s']:.2f}s), "  # type: ignore[operator]
                     f"{burst['exits']} exit events in {burst['exited_s']:.2f}s, duplicates {burst['duplicates']}, "
                     f"failures {len(burst['failures'])} {burst['failures'][:3]}")  # type: ignore[index,arg-type]
        lines.append(f"capsa sequential: {len(sequential) / sum(sequential):.0f} starts/s")

        if args.daemon_jobs:
            errors, took, latencies, states = _daemon_burst(scratch / "daemon-home", args.daemon_jobs, args.threads)
            rows.append(_row(f"daemon RunJob burst, {args.threads} clients (start_latency_ns)", latencies))
            lines.append(f"daemon burst: {len(latencies)}/{args.daemon_jobs} RunJob ok from {args.threads} clients "
                         f"in {took:.2f}s ({len(latencies) / took:.0f} jobs/s); errors {len(errors)} {errors[:3]}; "
                         f"final states {dict(states)}")

        if shutil.which("runc"):
            bundle = runc_true_bundle(scratch / "bundle")
            _runc_once(bundle)
            seq = [_runc_once(bundle) for _ in range(args.runc_jobs)]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.threads) as pool:
                par = list(pool.map(lambda _: _runc_once(bundle), range(args.runc_jobs)))
            par_s = time.perf_counter() - t0
            rows.append(_row("runc run, sequential (wall, start to end)", seq))
            rows.append(_row(f"runc run, {args.threads} threads (wall)", par))
            lines.append(f"runc sequential: {len(seq) / sum(seq):.0f} runs/s; "
                         f"{args.threads} threads: {len(par) / par_s:.0f} runs/s")
        else:
            lines.append("runc: not installed (apt-get install runc)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n".join(rows))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
