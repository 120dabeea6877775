"""Job start, A/B in one run: daemons with different environments (or source trees), starts alternated, runc beside.

Run (as root):  .venv/bin/python bench/bench_start_ab.py [--runs 100] ARM [ARM ...]

Each ARM is a comma-separated list of NAME=VALUE environment settings for one daemon (its supervisor and
zygote inherit them); ``""`` is the environment as it is. Examples::

    # standbys off against on
    .venv/bin/python bench/bench_start_ab.py CAPSA_STANDBY_IDLE_MS=0 ""
    # an older tree (``git archive REV src | tar -x -C /tmp/old``) against this one
    .venv/bin/python bench/bench_start_ab.py PYTHONPATH=/tmp/old/src ""

Every round starts ``/bin/true`` once on each daemon (RunJob, then its log to the end) and runs
``runc run`` of /bin/true on a busybox OCI bundle after each, so background load hits every arm alike.
Prints each arm's daemon-side start p50/p90 (``Job.start_latency_ns``) and its ratio to runc's p50;
nothing is written to docs/BENCHMARKS.md (the figures go to the ADR or issue that asked for them).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    command_line,
    runc_true_bundle,
    running_daemon,
    scratch_dir,
    summary,
    timed_command,
)


def _arm(text: str) -> dict[str, str]:
    env = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"bench_start_ab: {item!r} is not NAME=VALUE")
        env[name] = value
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("arms", nargs="+", help='NAME=VALUE[,NAME=VALUE...] per daemon; "" for as-is')
    args = parser.parse_args()
    if not shutil.which("runc"):
        raise SystemExit("bench_start_ab: runc not found (apt-get install runc)")
    arms = [(text or "(as is)", _arm(text)) for text in args.arms]
    print(f"command: {command_line()}", flush=True)
    scratch = scratch_dir("capsa-bench-ab-")
    try:
        bundle = runc_true_bundle(scratch / "bundle")
        with contextlib.ExitStack() as stack:
            daemons = []
            for i, (name, env) in enumerate(arms):
                saved = dict(os.environ)
                os.environ.update(env)
                try:
                    daemon = stack.enter_context(running_daemon(scratch / f"home{i}"))
                finally:
                    os.environ.clear()
                    os.environ.update(saved)
                daemons.append((name, stack.enter_context(daemon.client())))
            latency: dict[str, list[float]] = {name: [] for name, _ in daemons}
            runc: list[float] = []
            load = os.getloadavg()[0]
            for i in range(args.warmup + args.runs):
                for arm, (name, client) in enumerate(daemons):
                    job = client.run_job(["/bin/true"])
                    for _ in client.stream_logs(job.id, follow=True):
                        pass
                    took = timed_command(["runc", "run", "--bundle", str(bundle), f"cb-ab-{i}-{arm}"])
                    if i >= args.warmup:
                        latency[name].append(job.start_latency_ns / 1e9)
                        runc.append(took)
        runc_p50 = summary(runc)["p50"]
        print(f"load {load:.1f} -> {os.getloadavg()[0]:.1f}; runc run p50 {runc_p50 * 1e3:.2f} ms ({len(runc)} runs)")
        for name, values in latency.items():
            st = summary(values)
            print(f"  {name:40s} p50 {st['p50'] * 1e3:6.2f} ms  p90 {st['p90'] * 1e3:6.2f} ms  "
                  f"ratio {st['p50'] / runc_p50:.3f}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
