"""The zygote's spare job process (capsa.runtime.zygote._Spares): cloned ahead, discarded when stale.

The spare is cloned with CLONE_PARENT, so it is a child of the zygote's parent. Here a forked child
of the test plays the supervisor (it reaps) and its child plays the zygote.
"""

from __future__ import annotations

import json
import os
import socket
import traceback

from capsa.runtime import zygote
from capsa.runtime.protocol import ZygoteStart
from capsa.runtime.spec import JobSpec


class _Watch:
    def __init__(self) -> None:
        self.value = 0

    def generation(self) -> int:
        return self.value


def _as_supervisor(play_zygote: object) -> dict[str, object]:
    """Fork a 'supervisor' that forks a 'zygote' running ``play_zygote(report)``; returns what both saw."""
    read_end, write_end = os.pipe()
    supervisor = os.fork()
    if supervisor == 0:
        out: dict[str, object] = {}
        try:
            os.close(read_end)
            inner_r, inner_w = os.pipe()
            child = os.fork()
            if child == 0:
                result: dict[str, object] = {}
                try:
                    os.close(inner_r)
                    result = play_zygote()   # type: ignore[operator]
                except BaseException:
                    result = {"crash": traceback.format_exc()}
                os.write(inner_w, json.dumps(result).encode())
                os._exit(0)
            os.close(inner_w)
            with os.fdopen(inner_r) as fh:
                out["zygote"] = json.loads(fh.read())
            reaped = {}
            while True:   # the zygote, and every spare it cloned (our children through CLONE_PARENT)
                try:
                    pid, status = os.waitpid(-1, 0)
                except ChildProcessError:
                    break
                reaped[str(pid)] = os.waitstatus_to_exitcode(status)
            out["reaped"] = reaped
            out["zygote_pid"] = child
        except BaseException:
            out["crash"] = traceback.format_exc()
        finally:
            os.write(write_end, json.dumps(out).encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as fh:
        data = fh.read()
    os.waitpid(supervisor, 0)
    result = json.loads(data)
    assert "crash" not in result, result["crash"]
    assert "crash" not in result["zygote"], result["zygote"]["crash"]
    return result


def _order() -> tuple[ZygoteStart, list[int]]:
    spec = JobSpec(job_id="spare1", argv=("/bin/true",), env={}, hostname="s", job_dir="/nonexistent/spare1")
    fds = [os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC) for _ in range(3)]
    return ZygoteStart(spec, ()), fds


def test_a_spare_made_before_the_mount_table_changed_is_discarded_not_used() -> None:
    def play() -> dict[str, object]:
        watch = _Watch()
        a, b = socket.socketpair()
        spares = zygote._Spares(a, {}, watch)   # type: ignore[arg-type]
        spares.prepare()
        spare = spares.pid
        watch.value += 1   # the host's mount table changed after the spare was cloned
        msg, fds = _order()
        used = spares.start(msg, fds, -1, 0)
        for fd in fds:
            os.close(fd)
        return {"spare": spare, "used": used, "left": spares.pid}

    result = _as_supervisor(play)
    seen = result["zygote"]
    assert seen["spare"] > 0 and seen["used"] is False and seen["left"] == 0
    # The discarded spare saw its socket close and exited 0, as our (the supervisor's) child.
    assert result["reaped"][str(seen["spare"])] == 0


def test_a_spare_whose_zygote_goes_away_exits() -> None:
    def play() -> dict[str, object]:
        spares = zygote._Spares(socket.socketpair()[0], {}, _Watch())   # type: ignore[arg-type]
        spares.prepare()
        return {"spare": spares.pid}   # the zygote exits here, holding its end of the spare's socket

    result = _as_supervisor(play)
    assert result["reaped"][str(result["zygote"]["spare"])] == 0
