"""Helpers for the capsule e2e tests: capsule trees, jobs that report what they see, host-side views.

A job's own view is what matters (it has no CAP_SYS_ADMIN and a seccomp filter),
so the probes run *inside* jobs: a small Python program passed with ``python3 -c``
waits for trigger files that the test creates in the job's ``/work`` (a host
directory), prints one JSON line per observation, and the test reads its log.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from capsa.api.client import CapsaClient
from capsa.cli.capsules import tar_chunks
from capsa.runtime import mounts
from tests.fixtures.daemon import RunningDaemon
from tests.fixtures.waiting import wait_for

# The in-job probe: wait("name") blocks until /work/name exists; say(...) prints a JSON line.
PROBE_PRELUDE = r"""
import ctypes, errno, json, os, sys, time
def wait(name):
    while not os.path.exists("/work/" + name):
        time.sleep(0.005)
def say(**kw):
    print(json.dumps(kw), flush=True)
def err(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
libc = ctypes.CDLL(None, use_errno=True)
def libc_call(fn, *args):
    if fn(*args) != 0:
        return errno.errorcode.get(ctypes.get_errno(), "?")
    return "ok"
"""


def make_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def create(client: CapsaClient, ref: str, tree: Path, *, deps: tuple[str, ...] = ()) -> Any:
    name, _, version = ref.partition("@")
    return client.create_capsule(name, version, tar_chunks(tree), dependencies=deps)


def probe_job(client: CapsaClient, program: str, *, capsules: list[str] | None = None) -> str:
    """Start a detached job running ``PROBE_PRELUDE + program``; returns its id once it runs."""
    job = client.run_job(["/usr/bin/python3", "-c", PROBE_PRELUDE + program], capsules=capsules)
    wait_for(lambda: client.get_job(job.id).state == "RUNNING", what=f"job {job.id[:12]} to run")
    return str(job.id)


def trigger(daemon: RunningDaemon, job_id: str, name: str) -> None:
    (daemon.home / "jobs" / job_id / "work" / name).touch()


def job_lines(client: CapsaClient, job_id: str, *, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The JSON lines a probe printed, after it ended (its stderr is in the assertion message)."""
    wait_for(lambda: client.get_job(job_id).ended, timeout=timeout, what=f"job {job_id[:12]} to end")
    out = b"".join(c.data for c in client.stream_logs(job_id) if c.stream == 1)
    err = b"".join(c.data for c in client.stream_logs(job_id) if c.stream == 2)
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert client.get_job(job_id).exit_code == 0, f"probe failed: {err.decode()[-2000:]}"
    return lines


def merged(lines: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for line in lines:
        result.update(line)
    return result


def visible_mounts(pid: int) -> dict[str, mounts.MountEntry]:
    """What the job sees at each mount point (the last, i.e. top, entry wins)."""
    return {e.mount_point: e for e in mounts.mountinfo(pid)}


def content_dir(daemon: RunningDaemon, digest: str) -> Path:
    return daemon.home / "capsules" / "content" / "sha256" / digest.partition(":")[2]


def job_pid(client: CapsaClient, job_id: str) -> int:
    return int(client.get_job(job_id).pid)


def stop(client: CapsaClient, *job_ids: str) -> None:
    for job_id in job_ids:
        if not client.get_job(job_id).ended:
            client.stop_job(job_id, grace_seconds=0.2)
