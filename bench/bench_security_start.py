"""Cost of capsa's per-job hardening on job start: no_new_privs + capability drop + seccomp install.

One run measures, in freshly forked children of this (single-threaded) process, as stage two
would run them (the zygote compiled the profiles before forking):

* ``steps``: time inside the child from before the first hardening call to after the last,
  for ``none`` (empty), ``caps+nnp`` (rlimits, drop_capabilities, set_no_new_privs), and
  ``caps+nnp+default`` / ``caps+nnp+strict`` (the same plus install_bpf of the precompiled
  profile) — p50 / p99 / mean over ``--jobs`` children each;
* ``fork..exit``: wall time in the parent from ``fork`` to reaping a child that applied the
  hardening and exec'd ``/bin/true`` (so any cost the filter adds to execve and the dynamic
  loader shows up), ``none`` vs ``caps+nnp+default`` and ``caps+nnp+strict``;
* the one-time cost of compiling each profile (JSON load + validation + libseccomp build + BPF
  export), which the zygote pays once.

Needs root (capability drop). Run:  .venv/bin/python bench/bench_security_start.py [--jobs 500]
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable

from capsa.runtime import security
from capsa.runtime.security import seccomp


def _steps(profile: str | None, harden: bool) -> Callable[[], None]:
    bpf = seccomp.compile_profile(profile) if profile else b""

    def run() -> None:
        if harden:
            security.apply_rlimits(security.DEFAULT_RLIMITS)
            security.drop_capabilities(security.DEFAULT_CAPABILITIES)
            security.set_no_new_privs()
        if bpf:
            security.install_bpf(bpf)

    return run


def _measure_steps(fn: Callable[[], None], jobs: int) -> list[float]:
    """Microseconds spent in ``fn`` inside each of ``jobs`` forked children."""
    out: list[float] = []
    for _ in range(jobs):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            t0 = time.perf_counter_ns()
            fn()
            t1 = time.perf_counter_ns()
            os.write(w, struct.pack("q", t1 - t0))
            os._exit(0)
        os.close(w)
        data = os.read(r, 8)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0 or len(data) != 8:
            raise SystemExit(f"child failed: status {status}")
        out.append(struct.unpack("q", data)[0] / 1000)
    return out


def _measure_exec(fn: Callable[[], None], jobs: int) -> list[float]:
    """Microseconds from fork to reaping a child that ran ``fn`` and exec'd /bin/true."""
    out: list[float] = []
    for _ in range(jobs):
        t0 = time.perf_counter_ns()
        pid = os.fork()
        if pid == 0:
            try:
                fn()
                os.execv("/bin/true", ["/bin/true"])
            finally:
                os._exit(127)
        _, status = os.waitpid(pid, 0)
        out.append((time.perf_counter_ns() - t0) / 1000)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"child failed: status {status}")
    return out


def _row(label: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"  {label:<26} p50 {p50:9.1f} us   p99 {p99:9.1f} us   mean {statistics.fmean(ordered):9.1f} us"


def _compile_cost(name: str, runs: int) -> tuple[float, float]:
    """(first compile in this process, median of later fresh compiles) in milliseconds."""
    uncached = seccomp.compile_profile.__wrapped__  # type: ignore[attr-defined]
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        uncached(name)
        times.append((time.perf_counter() - t0) * 1000)
    return times[0], statistics.median(times[1:] or times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--compile-runs", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (capability drop)", file=sys.stderr)
        return 1

    print(f"one-time compile (per profile, {args.compile_runs} runs):")
    for name in ("default", "strict"):
        first, median = _compile_cost(name, args.compile_runs)
        size = len(seccomp.compile_profile(name)) // 8
        print(f"  {name:<8} first {first:6.2f} ms   median {median:6.2f} ms   {size} BPF instructions")

    variants = {
        "none": _steps(None, harden=False),
        "caps+nnp": _steps(None, harden=True),
        "caps+nnp+default": _steps("default", harden=True),
        "caps+nnp+strict": _steps("strict", harden=True),
    }
    for fn in variants.values():  # warm up: page in code paths, fill the compile cache
        _measure_steps(fn, 20)
    print(f"\nhardening steps inside the job's stage two ({args.jobs} forked children each):")
    for label, fn in variants.items():
        print(_row(label, _measure_steps(fn, args.jobs)))

    print(f"\nfork -> hardening -> execve(/bin/true) -> reaped ({args.jobs} children each):")
    for label in ("none", "caps+nnp+default", "caps+nnp+strict"):
        print(_row(label, _measure_exec(variants[label], args.jobs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
