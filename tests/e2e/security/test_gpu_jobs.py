"""`capsa run --gpus N` end to end on a daemon whose GPU root is a fake driver tree (CAPSA_GPU_ROOT).

This machine has no GPU. The fake tree has the driver's /proc files for two GPUs, and its
"GPU" and control nodes are ordinary character devices (fuse, tun, loop-control), so the
binds, the device cgroup and the exclusivity are all real; only the hardware behind the
nodes is not a GPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon import RunningDaemon, running_daemon

NODES = {"nvidia0": (10, 229), "nvidia1": (10, 200), "nvidiactl": (10, 237)}
UUIDS = {0: "GPU-00000000-fake-0000-0000-000000000000", 1: "GPU-11111111-fake-1111-1111-111111111111"}
OPEN_DEV = """
import json, os
out = {}
for name in sorted(os.listdir('/dev')):
    if name.startswith('nvidia'):
        try:
            os.close(os.open('/dev/' + name, os.O_RDWR | os.O_NONBLOCK))
            out[name] = 'opened'
        except OSError as exc:
            out[name] = exc.errno
print(json.dumps({'dev': out, 'cuda': os.environ.get('CUDA_VISIBLE_DEVICES'),
                  'nvidia': os.environ.get('NVIDIA_VISIBLE_DEVICES')}))
"""


def make_gpu_root(root: Path) -> Path:
    for minor, uuid in UUIDS.items():
        info = root / f"proc/driver/nvidia/gpus/0000:0{minor + 1}:00.0/information"
        info.parent.mkdir(parents=True)
        info.write_text(f"Model: \t\t Fake T4\nGPU UUID: \t {uuid}\nBus Location: \t 0000:0{minor + 1}:00.0\n"
                        f"Device Minor: \t {minor}\nGPU Excluded:\t No\n")
    (root / "dev").mkdir()
    for name, (major, minor) in NODES.items():
        os.mknod(root / "dev" / name, stat.S_IFCHR | 0o666, os.makedev(major, minor))
    return root


@dataclass
class GpuDaemon(RunningDaemon):
    gpu_root: Path = Path("/")

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "CAPSA_GPU_ROOT": str(self.gpu_root)}


@contextlib.contextmanager
def gpu_daemon(home: Path, gpu_root: Path) -> Iterator[GpuDaemon]:
    with running_daemon(home, daemon_type=GpuDaemon, gpu_root=gpu_root) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def gpu_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_gpu_root(tmp_path_factory.mktemp("gpu-root"))
    for name in ("nvidia0", "nvidia1", "nvidiactl"):
        try:
            os.close(os.open(root / "dev" / name, os.O_RDWR | os.O_NONBLOCK))
        except OSError as exc:
            pytest.skip(f"the stand-in device {NODES[name]} does not open on this host: {exc}")
    return root


@pytest.fixture(scope="module")
def gdaemon(tmp_path_factory: pytest.TempPathFactory, gpu_root: Path) -> Iterator[GpuDaemon]:
    with gpu_daemon(tmp_path_factory.mktemp("gpu") / "home", gpu_root) as daemon:
        yield daemon


def wait_state(daemon: RunningDaemon, job_id: str, *states: str, timeout: float = 20) -> Any:
    """The job (API message) once in one of ``states`` (or at the timeout)."""
    deadline = time.monotonic() + timeout
    with daemon.client() as client:
        while True:
            job = client.get_job(job_id)
            if job.state in states or time.monotonic() > deadline:
                return job
            time.sleep(0.05)


def start_detached(daemon: RunningDaemon, argv: list[str], gpus: int) -> str:
    with daemon.client() as client:
        return str(client.run_job(argv, gpus=gpus).id)


def stop(daemon: RunningDaemon, job_id: str) -> None:
    with daemon.client() as client:
        client.stop_job(job_id, grace_seconds=0.2)


def test_a_gpu_job_sees_and_opens_only_its_gpu_and_the_control_node(gdaemon: GpuDaemon) -> None:
    done = gdaemon.cli("run", "--gpus", "1", "--", "python3", "-c", OPEN_DEV)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["dev"] == {"nvidia0": "opened", "nvidiactl": "opened"}
    assert seen["cuda"] == seen["nvidia"] == UUIDS[0]


def test_a_job_without_gpus_has_no_gpu_nodes_or_variables(gdaemon: GpuDaemon) -> None:
    done = gdaemon.cli("run", "--", "python3", "-c", OPEN_DEV)
    assert json.loads(done.stdout) == {"dev": {}, "cuda": None, "nvidia": None}


def test_gpus_are_exclusive_and_freed_when_the_job_ends(gdaemon: GpuDaemon) -> None:
    holder = start_detached(gdaemon, ["sleep", "30"], gpus=1)
    try:
        assert list(wait_state(gdaemon, holder, "RUNNING").gpu_devices) == [UUIDS[0]]
        second = gdaemon.cli("run", "--gpus", "1", "--", "python3", "-c", OPEN_DEV)
        assert second.returncode == 0, second.stderr
        assert json.loads(second.stdout)["dev"] == {"nvidia1": "opened", "nvidiactl": "opened"}
        refused = gdaemon.cli("run", "--gpus", "2", "--", "true")
        assert refused.returncode != 0
        assert b"only 1 of 2 GPUs are free" in refused.stderr and holder[:12].encode() in refused.stderr
    finally:
        stop(gdaemon, holder)
    info = json.loads(gdaemon.cli("inspect", holder, check=True).stdout)
    assert info["state"] == "STOPPED"
    assert info["gpus"] == 1 and info["gpu_devices"] == [UUIDS[0]]   # what it held, kept for inspect
    both = gdaemon.cli("run", "--gpus", "2", "--", "python3", "-c", OPEN_DEV)
    assert json.loads(both.stdout)["dev"] == {"nvidia0": "opened", "nvidia1": "opened", "nvidiactl": "opened"}
    assert json.loads(both.stdout)["cuda"] == f"{UUIDS[0]},{UUIDS[1]}"


def test_more_gpus_than_the_node_has_fails_before_a_job_exists(gdaemon: GpuDaemon) -> None:
    before = gdaemon.cli("ps", "-a", "-q", check=True).stdout
    done = gdaemon.cli("run", "--gpus", "3", "--", "true")
    assert done.returncode != 0 and b"--gpus 3: this node has 2 usable GPUs" in done.stderr, done.stderr
    assert gdaemon.cli("ps", "-a", "-q", check=True).stdout == before


def test_a_daemon_without_gpus_refuses_gpu_jobs_clearly(daemon: RunningDaemon) -> None:
    done = daemon.cli("run", "--gpus", "1", "--", "true")
    assert done.returncode != 0 and b"this node has 0 usable GPUs" in done.stderr, done.stderr


def test_allocations_survive_a_daemon_crash_and_are_reconciled(tmp_path: Path, gpu_root: Path) -> None:
    with gpu_daemon(tmp_path / "home", gpu_root) as first:
        keeper = start_detached(first, ["sleep", "30"], gpus=1)
        brief = start_detached(first, ["sleep", "0.5"], gpus=1)
        wait_state(first, keeper, "RUNNING")
        first.kill9()                 # the supervisor keeps both jobs; one ends while no daemon runs
        time.sleep(1.5)
        first.start()
        assert wait_state(first, brief, "COMPLETED").state == "COMPLETED"
        assert list(wait_state(first, keeper, "RUNNING").gpu_devices) == [UUIDS[0]]
        taken = first.cli("run", "--gpus", "1", "--", "python3", "-c", OPEN_DEV)   # the one freed meanwhile
        assert json.loads(taken.stdout)["dev"] == {"nvidia1": "opened", "nvidiactl": "opened"}
        assert b"only 1 of 2" in first.cli("run", "--gpus", "2", "--", "true").stderr
        stop(first, keeper)
