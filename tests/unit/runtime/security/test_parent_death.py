"""die_with_parent: the job's PID 1 dies with the supervisor, and sees one that died before it asked."""

from __future__ import annotations

import os
import signal
import time

from capsa.runtime.security import die_with_parent


def _in_child(body) -> int:  # type: ignore[no-untyped-def]
    """Run ``body`` in a forked child (prctl must not touch pytest's process); its exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(body())
        except BaseException:
            os._exit(99)
    return os.waitpid(pid, 0)[1]


def test_a_parent_that_already_exited_is_reported() -> None:
    def body() -> int:
        gone = os.fork()
        if gone == 0:
            os._exit(0)
        pidfd = os.pidfd_open(gone)
        time.sleep(0.05)   # it exits; a zombie is enough for its pidfd to read ready
        try:
            die_with_parent(pidfd)
        except OSError as exc:
            return 0 if exc.errno == 3 and "supervisor exited" in str(exc) else 2
        return 1

    assert os.waitstatus_to_exitcode(_in_child(body)) == 0


def test_a_live_parent_is_not_reported_and_its_death_kills_the_child() -> None:
    read_end, write_end = os.pipe()

    def middle() -> int:   # the "supervisor": starts the "job", then dies
        job = os.fork()
        if job == 0:
            die_with_parent(os.pidfd_open(os.getppid()))
            os.write(write_end, str(os.getpid()).encode())
            time.sleep(30)
            os._exit(0)
        time.sleep(0.3)
        os._exit(0)   # the job must get SIGKILL now

    assert os.waitstatus_to_exitcode(_in_child(middle)) == 0
    os.close(write_end)
    job_pid = int(os.read(read_end, 32))
    os.close(read_end)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{job_pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":   # killed, not yet reaped by its new parent
                    return
        except FileNotFoundError:
            return
        time.sleep(0.02)
    os.kill(job_pid, signal.SIGKILL)
    raise AssertionError("the child outlived its parent")
