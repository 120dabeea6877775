"""A standby process (capsa.runtime.standby.standby_main) on its own: ready, one order, stale templates, EOF.

Each test forks the standby from the test process (as the zygote clones it) with a stand-in for the
job process's code that reports what it was handed. Needs root (the standby unshares a mount namespace).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable

from capsa.runtime import standby
from capsa.runtime.protocol import StandbyReady, ZygoteStart, decode, encode
from capsa.runtime.spec import JobSpec
from capsa.runtime.wire import FrameReader, encode_frame


def _fork_standby(shared: standby.StandbyShared, template: int, build: int) -> tuple[int, socket.socket, int]:
    """(pid, the supervisor's end of its link, the read end of what its stand-in job reports)."""
    ours, theirs = socket.socketpair()
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        ours.close()
        os.close(report_r)

        def run_job(msg: ZygoteStart, fds: list[int], template: int, in_root: Callable[[], None] | None) -> None:
            mnt_ns_changed = os.readlink("/proc/self/ns/mnt") != os.readlink(f"/proc/{os.getppid()}/ns/mnt")
            os.write(report_w, json.dumps({"job": msg.spec.job_id, "fds": len(fds), "template": template,
                                           "learns": in_root is not None, "own_mnt_ns": mnt_ns_changed}).encode())
            os._exit(0)

        standby.standby_main(theirs, run_job, template, build, shared)   # type: ignore[arg-type]
    theirs.close()
    os.close(report_w)
    return pid, ours, report_r


def _ready_pid(link: socket.socket) -> int:
    reader = FrameReader()
    while not (frames := reader.feed(link.recv(4096))):
        pass
    msg = decode(frames[0])[1]
    assert isinstance(msg, StandbyReady)
    return msg.pid


def _order(link: socket.socket) -> None:
    spec = JobSpec(job_id="s" * 32, argv=("/bin/true",), env={}, hostname="s", job_dir="/nonexistent")
    pipes = [os.pipe() for _ in range(4)]
    socket.send_fds(link, [encode_frame(encode(ZygoteStart(spec)))], [w for _r, w in pipes])
    for r, w in pipes:
        os.close(r)
        os.close(w)


def _report(fd: int) -> dict[str, object]:
    with os.fdopen(fd) as fh:
        return json.loads(fh.read() or "{}")


def _one_order(shared: standby.StandbyShared, *, rebuilt_to: int = 0) -> tuple[int, int, int, dict[str, object]]:
    """A standby cloned at template build 7 gets one order; ``rebuilt_to``: the zygote's new build
    published while it waited. (its PID, the PID it said, the template fd it had, its report)"""
    template = os.open("/", os.O_PATH | os.O_CLOEXEC)   # stands in for the template's tree fd
    try:
        pid, link, report = _fork_standby(shared, template, 7)
        said = _ready_pid(link)
        if rebuilt_to:
            shared.publish_template(rebuilt_to)
        _order(link)
        link.close()
        got = _report(report)
        os.waitpid(pid, 0)
    finally:
        os.close(template)
    return pid, said, template, got


def test_a_standby_says_its_pid_runs_one_order_in_a_mount_namespace_of_its_own_and_keeps_a_current_template() -> None:
    shared = standby.StandbyShared()
    shared.publish_template(7)
    pid, said, template, got = _one_order(shared)
    assert said == pid   # the supervisor's view of its PID, though it is not in a PID ns here
    assert got == {"job": "s" * 32, "fds": 4, "template": template, "learns": True, "own_mnt_ns": True}


def test_a_standby_whose_template_was_rebuilt_since_its_clone_builds_its_root_itself() -> None:
    shared = standby.StandbyShared()
    shared.publish_template(7)
    shared.record_pages([])   # learned already (nothing): this one does not learn
    _pid, _said, _template, got = _one_order(shared, rebuilt_to=8)   # rebuilt while the standby waited
    assert got["template"] == -1 and got["learns"] is False


def test_a_standby_let_go_exits_without_running_anything() -> None:
    shared = standby.StandbyShared()
    pid, link, report = _fork_standby(shared, -1, 0)
    _ready_pid(link)
    link.close()   # the supervisor drops it (shutdown)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and _report(report) == {}
