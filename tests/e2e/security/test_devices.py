"""The device cgroup decides, not the presence of a node: a node bound into a job's /dev opens only
when the job's device rules allow it (the mechanism GPUs rely on, proven with ordinary devices).

The jobs are started on a supervisor of the test's own (the public API binds and allows GPU nodes
together, so "bound but not allowed" is only reachable through a hand-made JobSpec).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsa.logs import Stream, read_log
from capsa.runtime.client import SupervisorClient, ensure_supervisor
from capsa.runtime.devices import BASE_DEVICE_RULES
from capsa.runtime.spec import DeviceSpec, JobSpec

# Ordinary character devices whose open(2) needs no capability and has no side effect.
CANDIDATES = [(10, 229, "fuse"), (10, 200, "net/tun"), (10, 237, "loop-control")]
OPEN_ALL = """
import json, os, sys
out = {}
for path in sys.argv[1:]:
    try:
        os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK))
        out[path] = "opened"
    except OSError as exc:
        out[path] = exc.errno
print(json.dumps(out))
"""


def _opens_on_host(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK))
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str]]:
    """Two device nodes made in a host tmp dir (not under /dev), each with its device-cgroup rule."""
    directory = tmp_path_factory.mktemp("nodes")
    found = []
    for major, minor, name in CANDIDATES:
        node = directory / name.replace("/", "-")
        os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(major, minor))
        if _opens_on_host(node):
            found.append((node, f"c {major}:{minor} rw"))
    if len(found) < 2:
        pytest.skip(f"fewer than two of {CANDIDATES} open on this host")
    return found[:2]


@pytest.fixture(scope="module")
def supervisor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SupervisorClient]:
    home = tmp_path_factory.mktemp("supervisor")
    client, _ = ensure_supervisor(home)
    try:
        yield client
    finally:
        client.shutdown()
        pid_file = home / "run" / "supervisor.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def run_spec(supervisor: SupervisorClient, home: Path, **fields: object) -> tuple[int | None, dict[str, object]]:
    job_id = "dev" + secrets.token_hex(8)
    spec = JobSpec(job_id=job_id, env={}, hostname=job_id[:12], job_dir=str(home / job_id), **fields)  # type: ignore[arg-type]
    supervisor.start(spec)
    deadline = time.monotonic() + 30
    while True:
        record = next(j for j in supervisor.list() if j.job_id == job_id)
        if record.state == "exited" or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    supervisor.forget(job_id)
    chunks = list(read_log(Path(spec.log_dir)))
    out = b"".join(c.data for c in chunks if c.stream == Stream.STDOUT)
    err = b"".join(c.data for c in chunks if c.stream == Stream.STDERR)
    assert record.exit_code == 0, (record, err)
    return record.exit_code, json.loads(out)


@pytest.mark.host_probe
def test_both_nodes_open_on_the_host(nodes: list[tuple[Path, str]]) -> None:
    assert all(_opens_on_host(node) for node, _ in nodes)


def test_a_bound_node_opens_only_when_the_device_cgroup_allows_it(
        supervisor: SupervisorClient, nodes: list[tuple[Path, str]], tmp_path: Path) -> None:
    (allowed, allowed_rule), (denied, _) = nodes
    _, opened = run_spec(
        supervisor, tmp_path,
        argv=("python3", "-c", OPEN_ALL, "/dev/extra/allowed", "/dev/extra/denied", "/dev/null"),
        devices=(DeviceSpec(str(allowed), "/dev/extra/allowed"), DeviceSpec(str(denied), "/dev/extra/denied")),
        device_allow=(allowed_rule,),
    )
    assert opened == {"/dev/extra/allowed": "opened", "/dev/extra/denied": 1, "/dev/null": "opened"}


def test_without_an_allow_rule_even_the_bound_node_is_refused(
        supervisor: SupervisorClient, nodes: list[tuple[Path, str]], tmp_path: Path) -> None:
    (allowed, _), _ = nodes
    _, opened = run_spec(supervisor, tmp_path, argv=("python3", "-c", OPEN_ALL, "/dev/extra/allowed"),
                         devices=(DeviceSpec(str(allowed), "/dev/extra/allowed"),))
    assert opened == {"/dev/extra/allowed": 1}   # EPERM from the device cgroup


def test_the_jobs_device_rules_are_the_minimal_dev_plus_its_own(
        supervisor: SupervisorClient, nodes: list[tuple[Path, str]], tmp_path: Path) -> None:
    (allowed, rule), _ = nodes
    code = ("import json, os\n"
            "base = '/sys/fs/cgroup/devices'\n"
            "print(json.dumps(open(base + '/devices.list').read().split('\\n') if os.path.exists(base) else None))\n")
    _, rules = run_spec(supervisor, tmp_path, argv=("python3", "-c", code),
                        devices=(DeviceSpec(str(allowed), "/dev/extra"),), device_allow=(rule,))
    if rules is None:
        pytest.skip("cgroup v2: the rules live in an eBPF program (tests/unit/runtime/cgroups/test_devices_v2.py)")
    assert [r for r in rules if r] == [*BASE_DEVICE_RULES, rule]   # read through the job's own read-only view
