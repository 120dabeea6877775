"""Live mounts done in the calling process (``in_process=True``, what the zygote uses).

The namespace work then happens in the caller itself, which must come back to its own mount
namespace and working directory and hold no descriptor more than before, whatever the outcome.
Each call runs in a forked, single-threaded child of the test process (``setns(CLONE_NEWNS)``
refuses a threaded caller), which reports what it saw on a pipe.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from capsa.errors import CapsaError
from capsa.runtime import mounts
from tests.integration.runtime.test_mounts import Job, _agent, _version_dir

pytestmark = pytest.mark.skipif(
    not os.access("/usr/bin/python3", os.X_OK), reason="the in-job agent runs the host's /usr/bin/python3"
)


def _state() -> dict[str, object]:
    st = os.stat("/proc/self/ns/mnt")
    return {"ns": [st.st_dev, st.st_ino], "cwd": os.getcwd(), "fds": sorted(os.listdir("/proc/self/fd"))}


def _in_child(operation: Callable[[], None], cwd: Path) -> dict[str, object]:
    """Run ``operation`` in a forked child in ``cwd``: its error (if any) and its state before and after."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        out: dict[str, object] = {}
        try:
            os.close(read_end)
            os.chdir(cwd)
            out["before"] = _state()
            try:
                operation()
            except CapsaError as exc:
                out["error"] = {"code": exc.code, "message": exc.message, "errno": exc.detail.get("errno", 0)}
            out["after"] = _state()
        except BaseException:
            out["crash"] = traceback.format_exc()
        finally:
            os.write(write_end, json.dumps(out).encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as fh:
        data = fh.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, data
    result = json.loads(data)
    assert "crash" not in result, result["crash"]
    return result


@pytest.fixture
def job(tmp_path: Path) -> Iterator[Job]:
    running = _agent(tmp_path / "jobroot")
    yield running
    running.stop()


def test_attach_swap_detach_in_process_come_back_to_the_callers_namespace(job: Job, tmp_path: Path) -> None:
    v1, v2 = _version_dir(tmp_path, "v1", "v1"), _version_dir(tmp_path, "v2", "v2")
    for operation, expected in (
        (lambda: mounts.attach(job.pidfd, v1, "/capsules/x", in_process=True), "v1"),
        (lambda: mounts.swap(job.pidfd, v2, "/capsules/x", in_process=True), "v2"),
    ):
        result = _in_child(operation, tmp_path)
        assert "error" not in result, result
        assert result["after"] == result["before"]
        assert job.ask("read", path="/capsules/x/version") == {"ok": True, "value": expected}
    assert job.ask("write", path="/capsules/x/new")["errno"] == 30   # EROFS: read-only as ever
    result = _in_child(lambda: mounts.detach(job.pidfd, "/capsules/x", in_process=True), tmp_path)
    assert "error" not in result and result["after"] == result["before"]
    assert job.ask("listdir", path="/capsules/x") == {"ok": True, "value": []}


def test_a_refused_mount_in_process_reports_like_the_helper_and_comes_back(job: Job, tmp_path: Path) -> None:
    v1 = _version_dir(tmp_path, "v1", "v1")
    assert job.ask("symlink", target="/etc", path="/capsules/link")["ok"]
    in_process = _in_child(lambda: mounts.attach(job.pidfd, v1, "/capsules/link/x", in_process=True), tmp_path)
    helper = _in_child(lambda: mounts.attach(job.pidfd, v1, "/capsules/link/x"), tmp_path)
    assert in_process["error"] == helper["error"]
    assert in_process["error"]["code"] == "failed_precondition"
    assert "symlink" in in_process["error"]["message"]
    assert in_process["after"] == in_process["before"]
    missing = _in_child(lambda: mounts.detach(job.pidfd, "/capsules/none", in_process=True), tmp_path)
    assert missing["error"]["code"] == "not_found"
    assert missing["after"] == missing["before"]
