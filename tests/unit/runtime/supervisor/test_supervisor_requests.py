"""The supervisor's request handling, driven through its socket with fake kernel collaborators."""

from __future__ import annotations

import math
import socket
import struct
import threading
import time

import pytest
from sup_fakes import Harness

from capsa.errors import AlreadyExists, CapsaError, FailedPrecondition, InvalidArgument, NotFound, Timeout
from capsa.runtime.protocol import (
    ErrorReply,
    ExitEvent,
    JobRecord,
    PingReply,
    ProcState,
    StartFailedError,
    ZygoteMount,
    decode,
)
from capsa.runtime.supervisor import _core as supervisor_core
from capsa.runtime.wire import FrameReader


def wait_for(predicate, what: str, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def record(h: Harness, job_id: str) -> JobRecord:
    return next(r for r in h.client.list() if r.job_id == job_id)


def exited(h: Harness, job_id: str) -> JobRecord:
    return wait_for(lambda: (r := record(h, job_id)).state == ProcState.EXITED and r, f"job {job_id} to exit")


def test_ping_names_the_process_and_cgroup_version(harness: Harness) -> None:
    reply = harness.client.ping()
    assert isinstance(reply, PingReply) and reply.cgroup_version == 2 and reply.pid > 0


def test_start_answers_once_the_command_was_execd(harness: Harness) -> None:
    rec = harness.client.start(harness.spec())
    assert rec.state == ProcState.RUNNING and rec.pid >= 100_000 and rec.exec_latency_ns > 0


def test_start_of_an_existing_job_id_is_already_exists(harness: Harness) -> None:
    spec = harness.spec()
    harness.client.start(spec)
    with pytest.raises(AlreadyExists):
        harness.client.start(spec)


@pytest.mark.parametrize("job_id", ["../etc", "ABC", "", "a" * 65, "a/b"])
def test_start_with_an_unsafe_job_id_is_invalid(harness: Harness, job_id: str) -> None:
    with pytest.raises(InvalidArgument, match="job id"):
        harness.client.start(harness.spec(job_id=job_id))
    assert harness.driver.cgroups == {}


def test_start_with_a_relative_job_dir_is_invalid(harness: Harness) -> None:
    spec = harness.spec()
    bad = type(spec)(**{**spec.__dict__, "job_dir": "jobs/x"})
    with pytest.raises(InvalidArgument, match="job_dir"):
        harness.client.start(bad)


def test_a_missing_command_is_a_structured_start_failure(harness: Harness) -> None:
    spec = harness.spec("/missing")
    with pytest.raises(StartFailedError) as info:
        harness.client.start(spec)
    failure = info.value.failure
    assert failure.command_not_found and failure.exec_failed and failure.step == "exec /missing"
    assert info.value.code == "not_found"
    rec = exited(harness, spec.job_id)
    assert rec.exit_code == 127 and rec.reason.startswith("start failed")


def test_a_start_that_never_execs_is_killed_and_answered_at_its_deadline(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("capsa.runtime.supervisor._start.START_TIMEOUT_S", 0.2)
    with pytest.raises(StartFailedError) as info:
        harness.client.start(harness.spec("/hang"))
    assert info.value.failure.step == "start" and not info.value.failure.exec_failed


def test_an_unreadable_start_report_is_a_start_failure_not_a_hang(harness: Harness) -> None:
    with pytest.raises(StartFailedError) as info:
        harness.client.start(harness.spec("/garbage"))
    assert info.value.failure.step == "report" and "unreadable" in info.value.failure.message
    assert harness.client.alive()


def test_a_failing_cgroup_driver_is_an_internal_error_and_the_loop_goes_on(harness: Harness) -> None:
    harness.driver.fail_create = RuntimeError("boom")
    with pytest.raises(CapsaError, match="RuntimeError: boom") as info:
        harness.client.start(harness.spec())
    assert info.value.code == "internal"
    harness.driver.fail_create = None
    assert harness.client.start(harness.spec()).state == ProcState.RUNNING


def test_a_start_failing_after_its_order_closes_the_go_pipe_and_nothing_runs(harness: Harness) -> None:
    harness.driver.fail_create = RuntimeError("boom")
    spec = harness.spec()
    with pytest.raises(CapsaError, match="boom"):
        harness.client.start(spec)
    assert [type(o).__name__ for o in harness.zygote.orders] == ["ZygoteStart"]   # the order went out first
    deadline = time.monotonic() + 5
    while spec.job_id not in harness.zygote.not_started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert harness.zygote.not_started == [spec.job_id]
    assert spec.job_id not in harness.driver.cgroups and not harness.processes.alive


def test_stop_of_an_unknown_job_is_not_found(harness: Harness) -> None:
    with pytest.raises(NotFound):
        harness.client.stop("0" * 32, 1)


@pytest.mark.parametrize("grace", [math.inf, math.nan, -1.0, 86_401.0])
def test_stop_with_an_out_of_range_grace_is_invalid_and_the_job_keeps_running(
        harness: Harness, grace: float) -> None:
    spec = harness.spec()
    harness.client.start(spec)
    with pytest.raises(InvalidArgument, match="grace"):
        harness.client.stop(spec.job_id, grace)
    assert record(harness, spec.job_id).state == ProcState.RUNNING
    assert harness.driver.cgroups[spec.job_id].signals == []


def test_stop_with_no_grace_kills_and_reports_stopped_by_user(harness: Harness) -> None:
    spec = harness.spec()
    harness.client.start(spec)
    harness.client.stop(spec.job_id, 0)
    rec = exited(harness, spec.job_id)
    assert rec.stop_requested and rec.reason == "stopped by user" and rec.exit_code == 137


def test_stop_of_an_exited_job_returns_its_record_and_signals_nothing(harness: Harness) -> None:
    spec = harness.spec("/quick")
    harness.client.start(spec)
    exited(harness, spec.job_id)
    rec = harness.client.stop(spec.job_id, 5)
    assert rec.state == ProcState.EXITED and not rec.stop_requested
    assert harness.driver.cgroups[spec.job_id].signals == []


@pytest.mark.parametrize("signo", [0, 65, -9])
def test_signal_out_of_range_is_invalid(harness: Harness, signo: int) -> None:
    spec = harness.spec()
    harness.client.start(spec)
    with pytest.raises(InvalidArgument, match="signal"):
        harness.client.signal(spec.job_id, signo)


def test_signal_reaches_the_jobs_cgroup(harness: Harness) -> None:
    spec = harness.spec()
    harness.client.start(spec)
    harness.client.signal(spec.job_id, 10)
    assert harness.driver.cgroups[spec.job_id].signals == [10]


def test_forget_of_a_running_job_is_refused(harness: Harness) -> None:
    spec = harness.spec()
    harness.client.start(spec)
    with pytest.raises(FailedPrecondition, match="still running"):
        harness.client.forget(spec.job_id)


def test_an_exited_job_stays_listed_until_forgotten(harness: Harness) -> None:
    spec = harness.spec("/quick")
    harness.client.start(spec)
    assert exited(harness, spec.job_id).exit_code == 0
    harness.client.forget(spec.job_id)
    assert all(r.job_id != spec.job_id for r in harness.client.list())
    harness.client.forget(spec.job_id)   # forgetting twice is fine


def test_mount_of_an_unknown_or_exited_job_is_not_found(harness: Harness) -> None:
    with pytest.raises(NotFound):
        harness.client.mount("0" * 32, "detach", target="/x")
    spec = harness.spec("/quick")
    harness.client.start(spec)
    exited(harness, spec.job_id)
    with pytest.raises(NotFound, match="not running"):
        harness.client.mount(spec.job_id, "detach", target="/x")


@pytest.mark.parametrize(("action", "source", "target"), [
    ("explode", "/src", "/x"), ("attach", "", "/x"), ("attach", "/src", "relative"), ("detach", "", ""),
])
def test_mount_with_a_bad_action_or_path_is_invalid(harness: Harness, action: str, source: str, target: str) -> None:
    spec = harness.spec()
    harness.client.start(spec)
    with pytest.raises(InvalidArgument):
        harness.client.mount(spec.job_id, action, source=source, target=target)


def test_mount_goes_to_the_zygote_and_its_answer_comes_back(harness: Harness) -> None:
    spec = harness.spec()
    harness.client.start(spec)
    harness.client.mount(spec.job_id, "attach", source="/src", target="/opt/x")
    assert ZygoteMount("attach", "/opt/x", "/src", True) in harness.zygote.orders
    with pytest.raises(FailedPrecondition, match="no"):
        harness.client.mount(spec.job_id, "detach", target="/fail")


def test_a_mount_the_zygote_never_answers_times_out_and_the_zygote_is_replaced(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_core, "MOUNT_TIMEOUT_S", 0.2)
    spec = harness.spec()
    harness.client.start(spec)
    t0 = time.monotonic()
    with pytest.raises(Timeout, match="did not finish"):
        harness.client.mount(spec.job_id, "attach", source="/src", target="/hang")
    assert 0.2 <= time.monotonic() - t0 < 5
    assert harness.zygote.kills == 1
    harness.client.mount(spec.job_id, "attach", source="/src", target="/opt/y")   # the next one is answered


def test_exit_events_reach_subscribers_once(harness: Harness) -> None:
    events: list[ExitEvent] = []
    harness.client.subscribe(events.append)
    specs = [harness.spec("/quick") for _ in range(20)]
    for spec in specs:
        harness.client.start(spec)
    wait_for(lambda: len(events) >= 20, "20 exit events")
    time.sleep(0.05)
    assert sorted(e.job.job_id for e in events) == sorted(s.job_id for s in specs)


def test_concurrent_callers_share_one_connection(harness: Harness) -> None:
    errors: list[BaseException] = []

    def starter() -> None:
        try:
            for _ in range(15):
                assert harness.client.start(harness.spec()).state == ProcState.RUNNING
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=starter) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == [] and len(harness.client.list()) == 150


# -- malformed frames, on a raw connection ----------------------------------------------------------------
def raw(h: Harness) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(3)
    sock.connect(str(h.supervisor.sock_path))
    return sock


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def read_replies(sock: socket.socket, n: int) -> list[tuple[int, object]]:
    reader, out = FrameReader(), []
    while len(out) < n:
        data = sock.recv(65536)
        if not data:
            break
        out.extend(decode(f) for f in reader.feed(data))
    return out


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_frame_that_is_not_json_gets_an_error_and_the_connection_is_closed(harness: Harness) -> None:
    with raw(harness) as sock:
        sock.sendall(frame(b"{not json"))
        [(_, reply)] = read_replies(sock, 1)
        assert isinstance(reply, ErrorReply) and reply.code == "invalid_argument"
        assert closed_by_peer(sock)
    assert harness.client.alive()


def test_an_oversized_frame_is_refused_without_reading_it(harness: Harness) -> None:
    with raw(harness) as sock:
        sock.sendall(struct.pack(">I", 0xFFFF_FFF0) + b"x" * 100)
        [(_, reply)] = read_replies(sock, 1)
        assert isinstance(reply, ErrorReply) and "exceeds" in reply.message
        assert closed_by_peer(sock)
    assert harness.client.alive()


@pytest.mark.parametrize(("payload", "expected"), [
    (b'{"type":"teleport","id":7,"body":{}}', "unknown message type"),
    (b'{"type":"stop","id":7,"body":{"job_id":"ab","grace_s":"soon"}}', "expected a number"),
    (b'{"type":"signal","id":7,"body":{"job_id":"ab","signal":true}}', "expected an integer"),
    (b'{"type":"forget","id":7,"body":{}}', "missing field"),
    (b'{"type":"ok","id":7,"body":{}}', "is not a request"),
    (b'{"type":"stop","id":7,"body":{"job_id":"ab","grace_s":Infinity}}', "grace"),
])
def test_a_bad_request_gets_an_addressed_error_and_the_connection_stays_usable(
        harness: Harness, payload: bytes, expected: str) -> None:
    with raw(harness) as sock:
        sock.sendall(frame(payload) + frame(b'{"type":"ping","id":8,"body":{}}'))
        (id1, first), (id2, second) = read_replies(sock, 2)
    assert id1 == 7 and isinstance(first, ErrorReply) and first.code == "invalid_argument"
    assert expected in first.message
    assert id2 == 8 and isinstance(second, PingReply)


def test_a_request_split_into_single_bytes_is_understood(harness: Harness) -> None:
    with raw(harness) as sock:
        for byte in frame(b'{"type":"ping","id":3,"body":{}}'):
            sock.send(bytes([byte]))
        [(request_id, reply)] = read_replies(sock, 1)
    assert request_id == 3 and isinstance(reply, PingReply)


def test_a_client_gone_before_its_start_is_answered_does_not_disturb_the_loop(harness: Harness) -> None:
    spec = harness.spec()
    body = ('{"type":"start","id":1,"body":{"spec":' + spec.to_json() + "}}").encode()
    with raw(harness) as sock:
        sock.sendall(frame(body))
    wait_for(lambda: any(r.job_id == spec.job_id for r in harness.client.list()), "the start to be taken")
    assert harness.client.alive()


def test_a_job_dir_that_cannot_be_made_is_an_error_naming_it(harness: Harness) -> None:
    blocker = harness.home / "not-a-dir"
    blocker.write_text("a file where the job's directory should go")
    spec = harness.spec()
    bad = type(spec)(**{**spec.__dict__, "job_dir": str(blocker / "job")})
    with pytest.raises(CapsaError, match="not-a-dir"):
        harness.client.start(bad)
    assert harness.driver.cgroups == {}
    assert harness.client.ping().pid > 0   # the loop survived
