"""FenceRequest: the supervisor kills pool jobs whose lease deadline passed without renewal (ADR-0012)."""

from __future__ import annotations

import math
import time

import pytest
from sup_fakes import Harness

from capsa.errors import InvalidArgument
from capsa.runtime.protocol import FenceRequest, OkReply, ProcState


def _state(h: Harness, job_id: str) -> ProcState:
    return next(r for r in h.client.list() if r.job_id == job_id).state


def test_a_job_whose_deadline_passes_is_killed_and_a_renewed_one_lives(harness: Harness) -> None:
    doomed, renewed, other = harness.spec("/bin/sleep"), harness.spec("/bin/sleep"), harness.spec("/bin/sleep")
    for spec in (doomed, renewed, other):
        harness.client.start(spec)
    soon = time.monotonic() + 0.3
    harness.client.request(FenceRequest((doomed.job_id, renewed.job_id), soon), OkReply)
    harness.client.request(FenceRequest((renewed.job_id,), soon + 30), OkReply)   # a renewal moves it on
    deadline = time.monotonic() + 5
    while _state(harness, doomed.job_id) != ProcState.EXITED:
        assert time.monotonic() < deadline, "the fenced job was not killed"
        time.sleep(0.01)
    assert time.monotonic() >= soon   # not before its deadline
    record = next(r for r in harness.client.list() if r.job_id == doomed.job_id)
    assert record.exit_code == 137 and harness.driver.cgroups[doomed.job_id].kills >= 1
    time.sleep(0.2)
    assert _state(harness, renewed.job_id) == ProcState.RUNNING and _state(harness, other.job_id) == ProcState.RUNNING
    assert harness.driver.cgroups[renewed.job_id].kills == 0 and harness.driver.cgroups[other.job_id].kills == 0


def test_zero_lifts_the_deadline_and_unknown_jobs_are_ignored(harness: Harness) -> None:
    spec = harness.spec("/bin/sleep")
    harness.client.start(spec)
    harness.client.request(FenceRequest((spec.job_id, "unknown1"), time.monotonic() + 0.1), OkReply)
    harness.client.request(FenceRequest((spec.job_id,), 0), OkReply)
    time.sleep(0.3)
    assert _state(harness, spec.job_id) == ProcState.RUNNING


@pytest.mark.parametrize("request_", [FenceRequest(("../x",), 1.0), FenceRequest(("a",), math.inf),
                                      FenceRequest(("a",), -1.0)])
def test_bad_fence_requests_are_invalid(harness: Harness, request_: FenceRequest) -> None:
    with pytest.raises(InvalidArgument):
        harness.client.request(request_, OkReply)
