"""CLI wall time: what a user waits for from Enter to prompt, beside the floors under it.

Run (as root):  .venv/bin/python bench/bench_cli.py [--runs 40] [--no-doc] [--importtime]

Each series is the wall time of one fresh process, interleaved round by round so background load
hits all of them alike, against one daemon on a temporary home and a free loopback port:

- ``python -c pass``: the interpreter's own start-up, the floor of any Python CLI;
- bare gRPC round trip: a tiny script that imports grpc and the generated NodeService stub, opens an
  mTLS channel with the client certificate (PEM files, no YAML) and makes one GetVersion call - the
  floor of any Python gRPC client of this daemon;
- ``capsa --help``, ``capsa version``, ``capsa ps``, ``capsa run -d -- /bin/true`` and the attached
  ``capsa run -- /bin/true``, through the installed ``capsa`` entry point.

Before timing, the capsa sources (and ``--baseline``'s) are compiled to bytecode, as installing a wheel
does: under ``PYTHONDONTWRITEBYTECODE=1`` an editable install would otherwise recompile every capsa module
on every run and the series would measure the compiler.

Targets (issue 11): p50 ≤ 100 ms for ``--help``, ≤ 150 ms for ``ps`` and ``run -d``.
``--importtime`` also prints the slowest imports of ``capsa ps`` (``python -X importtime``).
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    command_line,
    fmt_ms,
    running_daemon,
    section_header,
    summary,
    update_section,
)

from capsa.config.client import load_client_config  # noqa: E402

TARGETS_MS = {"capsa --help": 100.0, "capsa ps": 150.0, "capsa run -d -- /bin/true": 150.0}

_BARE_GRPC = """
import sys
import grpc
from capsa.api.gen.capsa.v1 import common_pb2, jobs_pb2_grpc
d = sys.argv[1]
read = lambda name: open(f"{d}/{name}", "rb").read()
creds = grpc.ssl_channel_credentials(root_certificates=read("ca.pem"), private_key=read("key.pem"),
                                     certificate_chain=read("cert.pem"))
with grpc.secure_channel(sys.argv[2], creds) as channel:
    jobs_pb2_grpc.NodeServiceStub(channel).GetVersion(common_pb2.Empty(), timeout=10)
"""


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``argv``. CPU time (user + system, from wait4) counts
    the work the command does and little of the waiting for a core, so it stays meaningful on a
    loaded machine where wall time is mostly queueing."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)   # reaped here, not by Popen
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed ({proc.returncode}): {err.decode()[-500:]}")
    return took, usage.ru_utime + usage.ru_stime


def _slowest_imports(argv: list[str], env: dict[str, str], top: int) -> list[tuple[int, int, str]]:
    """(cumulative µs, self µs, module) of the top-level imports (depth 0) of one run of ``argv``."""
    res = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env, capture_output=True, text=True)
    rows = []
    for line in res.stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        self_us, cumulative_us, field = line[len("import time:"):].split("|")
        if not self_us.strip().isdigit():
            continue   # the header line
        if len(field) - len(field.lstrip()) == 1:   # one space: imported by no other module
            rows.append((int(cumulative_us), int(self_us), field.strip()))
    return sorted(rows, reverse=True)[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--importtime", action="store_true", help="also list the slowest imports of `capsa ps`")
    parser.add_argument("--baseline", type=Path, metavar="SRC",
                        help="also time the CLI of another checkout's src/ (e.g. a `git worktree` of an older "
                             "commit), run from the same venv with PYTHONPATH=SRC")
    parser.add_argument("--no-doc", action="store_true", help="print only; do not rewrite docs/BENCHMARKS.md")
    args = parser.parse_args()
    print(f"command: {command_line()}", flush=True)
    started = dt.datetime.now(dt.UTC)
    header = section_header("CLI wall time", started)   # now: its load average is the one timing starts under
    capsa = str(Path(sys.executable).parent / "capsa")
    import capsa as capsa_package

    for src in (Path(capsa_package.__file__).parent, *([args.baseline / "capsa"] if args.baseline else [])):
        compileall.compile_dir(src, quiet=1)

    with running_daemon() as daemon:
        config = daemon.home / "client-admin.yaml"
        node = load_client_config(config).select()
        pem_dir = daemon.home.parent / "bare-grpc"
        pem_dir.mkdir(exist_ok=True)
        for name, text in (("ca.pem", node.ca_pem), ("cert.pem", node.cert_pem), ("key.pem", node.key_pem)):
            (pem_dir / name).write_text(text)
            os.chmod(pem_dir / name, 0o600)
        env = {k: v for k, v in daemon.env.items() if not k.startswith("CAPSA_")}
        env["CAPSA_CONFIG"] = str(config)
        series: dict[str, list[str]] = {
            "python3 -c pass": [sys.executable, "-c", "pass"],
            "bare gRPC GetVersion (mTLS)": [sys.executable, "-c", _BARE_GRPC, str(pem_dir), daemon.address],
            "capsa --help": [capsa, "--help"],
            "capsa version": [capsa, "version"],
            "capsa ps": [capsa, "ps"],
            "capsa run -d -- /bin/true": [capsa, "run", "-d", "--", "/bin/true"],
            "capsa run -- /bin/true": [capsa, "run", "--", "/bin/true"],
        }
        envs = {name: env for name in series}
        if args.baseline is not None:
            runner = [sys.executable, "-c", "import sys; from capsa.cli.main import main; sys.exit(main())"]
            for name in ("capsa --help", "capsa ps", "capsa run -d -- /bin/true"):
                label = f"baseline ({args.baseline}): {name}"
                series[label] = [*runner, *series[name][1:]]
                envs[label] = {**env, "PYTHONPATH": str(args.baseline.resolve())}
        samples: dict[str, list[float]] = {name: [] for name in series}
        cpu: dict[str, list[float]] = {name: [] for name in series}
        for round_no in range(args.warmup + args.runs):
            for name, argv in series.items():
                took, used = _timed(argv, envs[name])
                if round_no >= args.warmup:
                    samples[name].append(took)
                    cpu[name].append(used)
        slowest = _slowest_imports([capsa, "ps"], env, 15) if args.importtime else []

    rows = []
    for name, values in samples.items():
        s = summary(values)
        target = TARGETS_MS.get(name)
        verdict = "" if target is None else (f"≤ {target:.0f} ms: " + ("met" if s["p50"] * 1000 <= target else "MISSED"))
        c = summary(cpu[name])
        rows.append(f"| {name} | {fmt_ms(s['p50'])} | {fmt_ms(s['p90'])} | {fmt_ms(s['mean'])} | "
                    f"{fmt_ms(c['p50'])} | {verdict} |")
    table = ("| command (fresh process) | wall p50 ms | wall p90 ms | wall mean ms | CPU p50 ms | target (wall p50) |\n"
             "|---|---:|---:|---:|---:|---|\n" + "\n".join(rows))
    body = (header
            + f"- Runs: {args.runs} per command after {args.warmup} warm-up rounds, interleaved\n"
            + "- Load average at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + "\n\n" + table + "\n")
    if slowest:
        body += ("\nSlowest top-level imports of `capsa ps` (`python -X importtime`, one run, µs):\n\n"
                 + "\n".join(f"- {name}: {cum} cumulative, {own} self" for cum, own, name in slowest) + "\n")
    print(body)
    if not args.no_doc:
        update_section("cli", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
