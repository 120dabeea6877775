"""The supervisor's exec handler (ADR-0013) against a fake zygote and process table."""

from __future__ import annotations

import base64

import pytest
from sup_fakes import Harness

from capsa.errors import FailedPrecondition, InvalidArgument, NotFound
from capsa.runtime.protocol import ExecRequest, ProcState, StartFailedError, ZygoteExec
from tests.fixtures.waiting import wait_for


def _out(b64: str) -> str:
    return base64.b64decode(b64).decode()


def test_exec_is_forked_by_the_zygote_with_the_jobs_spec_and_answered_at_its_end(harness: Harness) -> None:
    spec = harness.spec()
    harness.client.start(spec)
    reply = harness.client.exec(spec.job_id, ("/bin/ps", "-ef"), env=("A=1",), uid=5, gid=6, workdir="/tmp")
    assert (reply.exit_code, reply.signal, reply.oom_killed, reply.truncated) == (0, 0, False, False)
    assert _out(reply.stdout_b64) == "/bin/ps -ef|5:6|/tmp|A=1" and _out(reply.stderr_b64) == "err"
    assert reply.exec_latency_ns > 0
    order = next(o for o in harness.zygote.orders if isinstance(o, ZygoteExec))
    assert order.spec == spec and order.argv == ("/bin/ps", "-ef")
    # the job itself is untouched
    assert harness.client.list()[0].state == ProcState.RUNNING


def test_exec_exit_codes_are_kept_and_signals_are_128_plus_n(harness: Harness) -> None:
    spec = harness.spec()
    harness.client.start(spec)
    assert harness.client.exec(spec.job_id, ("/exit", "3")).exit_code == 3
    killed = harness.client.exec(spec.job_id, ("/kill",))
    assert (killed.exit_code, killed.signal) == (137, 9)


def test_exec_of_a_missing_command_is_a_start_failure_and_leaves_nothing(harness: Harness) -> None:
    spec = harness.spec()
    harness.client.start(spec)
    with pytest.raises(StartFailedError) as info:
        harness.client.exec(spec.job_id, ("/missing",))
    assert info.value.failure.exec_failed and info.value.failure.command_not_found
    sup = harness.supervisor
    wait_for(lambda: not sup.execs_by_fd and not sup.execs_by_pid, what="the exec tables to empty")


def test_exec_into_an_unknown_or_ended_job_is_refused(harness: Harness) -> None:
    with pytest.raises(NotFound):
        harness.client.exec("0" * 32, ("/bin/true",))
    spec = harness.spec("/quick")
    harness.client.start(spec)
    wait_for(lambda: harness.client.list()[0].state == ProcState.EXITED, what="the job to exit")
    with pytest.raises(FailedPrecondition, match="not running"):
        harness.client.exec(spec.job_id, ("/bin/true",))


@pytest.mark.parametrize("request_", [
    ExecRequest("a" * 32, ()),
    ExecRequest("a" * 32, ("",)),
    ExecRequest("a" * 32, ("/x\0y",)),
    ExecRequest("a" * 32, ("/x",), env=("=v",)),
    ExecRequest("a" * 32, ("/x",), env=("novalue",)),
    ExecRequest("a" * 32, ("/x",), uid=-2),
    ExecRequest("a" * 32, ("/x",), workdir="relative"),
    ExecRequest("Bad/Id", ("/x",)),
])
def test_bad_exec_requests_are_invalid(request_: ExecRequest) -> None:
    with pytest.raises(InvalidArgument):
        request_.validate()
