"""The runtime's one framing and its typed messages: round trips and every way decoding refuses."""

from __future__ import annotations

import math
import os
import socket
import struct

import pytest

from capsa.errors import CapsaError, InvalidArgument, NotFound, Unavailable
from capsa.runtime.protocol import (
    ErrorReply,
    ExitEvent,
    ForgetRequest,
    Forked,
    JobRecord,
    JobReply,
    ListReply,
    ListRequest,
    MountRequest,
    PingReply,
    ProcState,
    SignalRequest,
    StageFailed,
    StartFailed,
    StartFailedError,
    StartRequest,
    StopRequest,
    ZygoteStart,
    decode,
    encode,
)
from capsa.runtime.spec import BindSpec, JobSpec, ResourceSpec
from capsa.runtime.supervisor import ZygoteLink
from capsa.runtime.wire import FrameError, FrameReader, encode_frame

SPEC = JobSpec(job_id="ab12", argv=("/bin/sh", "-c", "echo"), env={"A": "1"}, hostname="h", job_dir="/tmp/j",
               resources=ResourceSpec(memory_bytes=1 << 20), binds=(BindSpec("/a", "/b"),))


@pytest.mark.parametrize("msg", [
    StartRequest(SPEC), StopRequest("ab12", 2.5), SignalRequest("ab12", 15), ListRequest(), ForgetRequest("ab12"),
    MountRequest("ab12", "attach", "/opt", "/src", False), PingReply(12, 2), ErrorReply("not_found", "x", 2),
    JobReply(JobRecord("ab12", pid=5, state=ProcState.RUNNING)), ListReply((JobRecord("a"), JobRecord("b"))),
    StartFailed("exec /x", 2, "nope", True, True), ExitEvent(JobRecord("ab12", exit_code=0)),
    ZygoteStart(SPEC), Forked(42), StageFailed("pivot_root", 1, "EPERM"),
])
def test_every_message_survives_a_round_trip_through_a_frame(msg: object) -> None:
    [payload] = FrameReader().feed(encode_frame(encode(msg, 9)))  # type: ignore[arg-type]
    assert decode(payload) == (9, msg)


@pytest.mark.parametrize(("body", "message"), [
    ({"job_id": "ab", "signal": True}, "expected an integer"),
    ({"job_id": "ab", "signal": 1.0}, "expected an integer"),
    ({"job_id": 5, "signal": 1}, "expected str"),
    ({"signal": 1}, "missing field 'job_id'"),
])
def test_decoding_checks_field_types_strictly(body: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        decode({"type": "signal", "id": 1, "body": body})


@pytest.mark.parametrize("spec_patch", [{"argv": "/bin/true"}, {"env": {"A": 1}}, {"uid": "0"}, {"job_id": None},
                                        {"resources": {"memory_bytes": 1, "bogus": 2}}])
def test_a_malformed_job_spec_is_invalid_argument(spec_patch: dict[str, object]) -> None:
    spec = {**encode(StartRequest(SPEC))["body"]["spec"], **spec_patch}
    with pytest.raises(InvalidArgument):
        decode({"type": "start", "id": 1, "body": {"spec": spec}})


@pytest.mark.parametrize("frame", [[], {"type": "ping", "id": -1}, {"type": "ping", "id": "1"},
                                   {"type": "ping", "body": []}, {"id": 1}])
def test_a_frame_that_is_not_a_message_is_invalid_argument(frame: object) -> None:
    with pytest.raises(InvalidArgument):
        decode(frame)


def test_validation_bounds_grace_and_signal() -> None:
    for grace in (math.inf, -math.inf, math.nan, -0.5, 86_400.5):
        with pytest.raises(InvalidArgument):
            StopRequest("ab", grace).validate()
    StopRequest("ab", 86_400).validate()
    StopRequest("ab", 0).validate()
    for signo in (0, 65):
        with pytest.raises(InvalidArgument):
            SignalRequest("ab", signo).validate()
    SignalRequest("ab", 64).validate()


def test_the_frame_reader_takes_frames_split_and_joined_anyhow() -> None:
    stream = b"".join(encode_frame(encode(Forked(i))) for i in range(50))
    reader, got = FrameReader(), []
    for i in range(0, len(stream), 7):
        got.extend(decode(f)[1] for f in reader.feed(stream[i:i + 7]))
    assert got == [Forked(i) for i in range(50)] and reader.pending == 0


def test_the_frame_reader_refuses_an_oversized_length_before_buffering_it() -> None:
    with pytest.raises(FrameError, match="exceeds"):
        FrameReader(max_message=1024).feed(struct.pack(">I", 1025))
    with pytest.raises(FrameError, match="not a JSON object"):
        FrameReader().feed(struct.pack(">I", 7) + b"[1,2,3]")
    with pytest.raises(FrameError):
        FrameReader().feed(struct.pack(">I", 2) + b"\xff\xfe")


def test_error_replies_become_the_errors_of_their_code() -> None:
    assert isinstance(ErrorReply("not_found", "gone").to_exception(), NotFound)
    assert isinstance(ErrorReply("unavailable", "later").to_exception(), Unavailable)
    exc = ErrorReply("no_such_code", "?").to_exception()
    assert type(exc) is CapsaError and exc.code == "internal"


def test_a_start_failure_carries_its_fields_and_maps_a_missing_command_to_not_found() -> None:
    missing = StartFailedError(StartFailed("exec /x", 2, "exec /x: not found", True, True))
    assert missing.code == "not_found" and missing.failure.command_not_found
    setup = StartFailedError(StartFailed("pivot_root", 1, "pivot_root: EPERM"))
    assert setup.code == "failed_precondition" and not setup.failure.exec_failed


def test_zygote_orders_wait_in_a_queue_when_its_socket_is_full() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    link = ZygoteLink()
    link.sock = ours
    big = JobSpec(job_id="ab", argv=("/bin/true",), env={"X": "y" * 20_000}, hostname="h", job_dir="/tmp/j")
    pipes = [os.pipe() for _ in range(5)]
    for _r, w in pipes:
        link.submit(ZygoteStart(big), [w])   # never blocks, whatever the zygote does
    assert link.wants_write()
    reader, received, fds = FrameReader(), [], []
    theirs.settimeout(2)
    while len(received) < 5:
        data, got_fds, _flags, _addr = socket.recv_fds(theirs, 65536, 4)
        fds.extend(got_fds)
        received.extend(reader.feed(data))
        link.flush()
    assert not link.wants_write() and len(fds) == 5
    for (r, _w), fd in zip(pipes, fds, strict=True):   # each order's descriptor arrived with it, in order
        os.write(fd, b"!")
        assert os.read(r, 1) == b"!"
        os.close(fd)
        os.close(r)
    ours.close()
    theirs.close()
