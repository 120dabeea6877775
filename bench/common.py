"""Shared plumbing for capsa's benchmarks: a throwaway daemon, a busybox rootfs for the peers,
percentiles, machine facts, process memory, and rewriting one section of docs/BENCHMARKS.md.

Benchmarks are scripts, not tests (pytest does not collect bench/). Each one runs capsa and its
peers in the same run, prints the exact command it was started with, and rewrites its own section
of docs/BENCHMARKS.md between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repository root: tests.fixtures

from tests.fixtures.daemon import CAPSA, RunningDaemon  # noqa: E402
from tests.fixtures.daemon import free_port as free_port  # noqa: E402  (for bench_pull)
from tests.fixtures.daemon import running_daemon as _running_daemon  # noqa: E402

__all__ = [
    "BENCH_DOC",
    "CAPSA",
    "BenchDaemon",
    "busybox_rootfs",
    "children",
    "command_line",
    "fmt_ms",
    "machine_summary",
    "pct",
    "pss_kib",
    "running_daemon",
    "scratch_dir",
    "section_header",
    "summary",
    "update_section",
    "uss_kib",
]

ROOT = Path(__file__).resolve().parents[1]
BENCH_DOC = ROOT / "docs" / "BENCHMARKS.md"
_DOC_HEADER = """# capsa benchmarks

Figures written by the scripts in `bench/` (each rewrites only its own section). Every section gives
the exact command, the machine, the date and the figures of one run in which capsa and its peers ran
side by side. Re-run a script to refresh its section.
"""


def command_line() -> str:
    """The exact command this benchmark was started with, as a shell would take it."""
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(ROOT)
    return shlex.join([".venv/bin/python", str(script), *sys.argv[1:]])


def scratch_dir(prefix: str) -> Path:
    """A temp dir on the disk that backs /var/tmp (not a tmpfs), removed by the caller."""
    base = Path("/var/tmp") if Path("/var/tmp").is_dir() else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


# --------------------------------------------------------------------------- statistics


def pct(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks."""
    data = sorted(samples)
    if not data:
        return float("nan")
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def summary(samples: Sequence[float]) -> dict[str, float]:
    return {"p50": pct(samples, 50), "p90": pct(samples, 90), "p99": pct(samples, 99),
            "mean": statistics.fmean(samples), "n": float(len(samples))}


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _cgroup_mode() -> str:
    fs = Path("/sys/fs/cgroup")
    if (fs / "cgroup.controllers").exists():
        return "v2 (unified)"
    if (fs / "unified").is_dir():
        return "v1 hybrid"
    return "v1"


def machine_summary() -> str:
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} × {_cpu_model()}, {mem_kib / 1048576:.0f} GiB RAM, Linux {platform.release()}, "
            f"cgroup {_cgroup_mode()}, Python {platform.python_version()}; load average at start: {load}")


# --------------------------------------------------------------------------- memory


def pss_kib(pid: int) -> int:
    """Proportional set size of one process in KiB (shared pages split among their users)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Pss line in /proc/{pid}/smaps_rollup")


def uss_kib(pid: int) -> int:
    """Unique set size in KiB: the pages only this process maps (Private_Clean + Private_Dirty)."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


# --------------------------------------------------------------------------- the doc


def update_section(name: str, body: str) -> None:
    """Replace (or append) the section ``name`` of docs/BENCHMARKS.md with ``body``."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = BENCH_DOC.read_text() if BENCH_DOC.exists() else _DOC_HEADER
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    BENCH_DOC.parent.mkdir(parents=True, exist_ok=True)
    BENCH_DOC.write_text(text)


def section_header(title: str, started: dt.datetime) -> str:
    return (f"## {title}\n\n"
            f"- Command: `{command_line()}`\n"
            f"- Date: {started:%Y-%m-%d %H:%M} UTC\n"
            f"- Machine: {machine_summary()}\n")


# --------------------------------------------------------------------------- a daemon


@dataclass
class BenchDaemon(RunningDaemon):
    """The tests' RunningDaemon, plus what benchmarks measure: the long-lived capsa processes."""

    client_timeout: float = 120.0

    def cli_argv(self, *args: str) -> list[str]:
        """The argv of a ``capsa`` command against this daemon (for benchmarks that time it themselves)."""
        return [*CAPSA, "--config", str(self.home / "client-admin.yaml"), *args]

    def capsa_pids(self) -> dict[str, int]:
        """daemon, supervisor and zygote: every long-lived capsa process (jobs' own processes excluded)."""
        assert self.proc is not None
        sup = self.supervisor_pid()
        assert sup is not None, "the daemon has no supervisor"
        exe = os.path.realpath(f"/proc/{sup}/exe")
        pids = {"daemon": self.proc.pid, "supervisor": sup}
        pid_ns = _safe_readlink(f"/proc/{sup}/ns/pid")
        helpers = [c for c in children(sup) if _safe_realpath(f"/proc/{c}/exe") == exe]
        # The zygote shares the supervisor's PID namespace; a standby (capsa.runtime.standby) has its own.
        zygotes = [c for c in helpers if _safe_readlink(f"/proc/{c}/ns/pid") == pid_ns]
        standbys = [c for c in helpers if c not in zygotes]
        for i, pid in enumerate(zygotes):
            pids["zygote" if i == 0 else f"supervisor-child-{i}"] = pid
        for i, pid in enumerate(standbys):
            pids["standby" if i == 0 else f"standby-{i}"] = pid
        return pids


def _safe_readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _safe_realpath(path: str) -> str:
    try:
        return os.path.realpath(path, strict=True)
    except OSError:
        return ""


@contextlib.contextmanager
def running_daemon(home: Path | None = None) -> Iterator[BenchDaemon]:
    """A capsa daemon with its own CAPSA_HOME on a free loopback port (tests.fixtures.daemon.running_daemon);
    stopped afterwards, and its home removed when this made it."""
    own_home = home is None
    home = home or scratch_dir("capsa-bench-") / "home"
    try:
        with _running_daemon(home, daemon_type=BenchDaemon, start_timeout=60.0) as daemon:
            yield daemon
    finally:
        if own_home:
            shutil.rmtree(home.parent, ignore_errors=True)


# --------------------------------------------------------------------------- peers' rootfs


def busybox_rootfs(target: Path) -> Path:
    """A minimal root filesystem: a static busybox and one symlink per applet (as busybox-static ships)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox not found: apt-get install busybox-static")
    desc = subprocess.run(["file", "-L", busybox], capture_output=True, text=True).stdout \
        if shutil.which("file") else "statically linked"
    if "statically linked" not in desc and "static-pie" not in desc:
        raise RuntimeError(f"{busybox} is not static: apt-get install busybox-static")
    (target / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, target / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        link = target / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    for name in ("proc", "dev", "tmp", "sys", "etc"):
        (target / name).mkdir(exist_ok=True)
    return target


def runc_true_bundle(bundle: Path) -> Path:
    """An OCI bundle (``runc spec``, terminal off) running /bin/true on a busybox-static rootfs: the peers' job."""
    busybox_rootfs(bundle / "rootfs")
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/bin/true"]
    config_path.write_text(json.dumps(config, indent=2))
    return bundle


def timed_command(argv: list[str]) -> float:
    """Wall seconds of one run of ``argv`` (output discarded); RuntimeError with its stderr's tail if it fails."""
    t0 = time.perf_counter()
    res = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({res.returncode}): {res.stderr.decode()[-500:]}")
    return took
