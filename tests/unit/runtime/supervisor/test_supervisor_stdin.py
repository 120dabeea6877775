"""Stdin and terminals of -i/-t jobs in the supervisor (ADR-0013), against the fake zygote."""

from __future__ import annotations

import fcntl
import os
import struct
import termios

import pytest
from sup_fakes import Harness

from capsa.errors import FailedPrecondition, InvalidArgument, NotFound
from capsa.runtime.protocol import InputRequest, ProcState, ZygoteStart
from tests.fixtures.waiting import wait_for


def test_input_reaches_a_stdin_pipe_and_eof_closes_it(harness: Harness) -> None:
    spec = harness.spec(stdin="pipe")
    harness.client.start(spec)
    order = next(o for o in harness.zygote.orders if isinstance(o, ZygoteStart))
    assert order.spec.stdin == "pipe"
    job_end = harness.zygote.stdin[spec.job_id]
    reply = harness.client.input(spec.job_id, b"a\nb\n")
    assert (reply.accepted, reply.closed, reply.tty) == (4, False, False)
    assert os.read(job_end, 100) == b"a\nb\n"
    assert harness.client.input(spec.job_id, b"c", eof=True).closed
    assert os.read(job_end, 100) == b"c"
    assert os.read(job_end, 100) == b""          # EOF: the supervisor closed its end
    assert harness.client.input(spec.job_id, b"more").closed
    os.close(job_end)


def test_a_full_pipe_takes_part_and_never_blocks_the_supervisor(harness: Harness) -> None:
    spec = harness.spec(stdin="pipe")
    harness.client.start(spec)
    job_end = harness.zygote.stdin[spec.job_id]
    taken = 0
    for _ in range(64):   # nobody reads: the pipe fills, then takes nothing
        taken += harness.client.input(spec.job_id, b"x" * 65536).accepted
    assert 0 < taken < 64 * 65536
    assert harness.client.input(spec.job_id, b"y").accepted == 0
    assert harness.client.list()[0].state == ProcState.RUNNING   # the loop went on answering
    os.close(job_end)   # the job's end closes: the next write finds the pipe broken
    assert harness.client.input(spec.job_id, b"z").closed


def test_a_terminal_job_gets_its_size_and_its_input_through_the_line_discipline(harness: Harness) -> None:
    spec = harness.spec(stdin="tty", tty_size=(30, 100))
    harness.client.start(spec)
    slave = harness.zygote.stdin[spec.job_id]
    assert os.isatty(slave)

    def size() -> tuple[int, int]:
        rows, cols, _x, _y = struct.unpack("HHHH", fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8))
        return rows, cols

    assert size() == (30, 100)
    harness.client.resize(spec.job_id, 41, 123)
    assert size() == (41, 123)
    reply = harness.client.input(spec.job_id, b"ls\r")
    assert reply.accepted == 3 and reply.tty
    assert os.read(slave, 100) == b"ls\n"          # ICRNL: the terminal's own translation
    os.close(slave)


def test_input_and_resize_are_refused_for_unknown_plain_and_ended_jobs(harness: Harness) -> None:
    with pytest.raises(NotFound):
        harness.client.input("0" * 32, b"x")
    plain = harness.spec()
    harness.client.start(plain)
    with pytest.raises(FailedPrecondition, match="not started with -i or -t"):
        harness.client.input(plain.job_id, b"x")
    piped = harness.spec("/quick", stdin="pipe")
    harness.client.start(piped)
    wait_for(lambda: any(r.job_id == piped.job_id and r.state == ProcState.EXITED for r in harness.client.list()),
             what="the job to exit")
    with pytest.raises(FailedPrecondition, match="ended"):
        harness.client.input(piped.job_id, b"x")
    os.close(harness.zygote.stdin[piped.job_id])
    running = harness.spec(stdin="pipe")
    harness.client.start(running)
    with pytest.raises(FailedPrecondition, match="no terminal"):
        harness.client.resize(running.job_id, 10, 10)
    os.close(harness.zygote.stdin[running.job_id])
    with pytest.raises(InvalidArgument):
        harness.client.resize(running.job_id, 0, 10)
    with pytest.raises(InvalidArgument):
        InputRequest(running.job_id, "A" * (1 << 20)).validate()


def test_the_interactive_messages_survive_a_round_trip(harness: Harness) -> None:
    from capsa.runtime.protocol import (
        ExecOutput,
        ExecRequest,
        ExecStarted,
        InputReply,
        ResizeRequest,
        StartRequest,
        ZygoteExec,
        decode,
        encode,
    )
    from capsa.runtime.wire import FrameReader, encode_frame

    spec = harness.spec(stdin="tty", tty_size=(30, 100))
    for msg in (InputRequest("ab12", "aGk=", True, 3), InputReply(2, True, True), ResizeRequest("ab12", 24, 80, 1),
                ExecStarted(7, True), ExecOutput(2, "aGk="), StartRequest(spec),
                ExecRequest("ab12", ("sh",), stream=True, stdin="tty", tty_size=(24, 80)),
                ZygoteExec(spec, (), ("sh",), (), -1, -1, "", tty=True)):
        [payload] = FrameReader().feed(encode_frame(encode(msg, 9)))
        assert decode(payload) == (9, msg)
    with pytest.raises(InvalidArgument):
        ExecRequest("ab12", ("sh",), stdin="pipe").validate()   # stdin only on a streamed exec
    with pytest.raises(InvalidArgument):
        StartRequest(harness.spec(stdin="file")).validate()


def test_a_streamed_exec_sends_its_output_as_it_comes_then_its_end(harness: Harness) -> None:
    import asyncio
    import base64

    from capsa.runtime.exec_stream import exec_stream
    from capsa.runtime.protocol import ExecOutput, ExecReply, ExecRequest, ExecStarted

    spec = harness.spec()
    harness.client.start(spec)

    async def collect(request: ExecRequest) -> list[object]:
        return [m async for m in exec_stream(harness.supervisor.sock_path, request)]

    msgs = asyncio.run(collect(ExecRequest(spec.job_id, ("/exit", "3"), stream=True)))
    assert isinstance(msgs[0], ExecStarted) and msgs[0].exec_id > 0 and not msgs[0].tty
    out = {m.stream: base64.b64decode(m.data_b64) for m in msgs if isinstance(m, ExecOutput)}
    assert out == {1: b"/exit 3|-1:-1||", 2: b"err"}
    end = msgs[-1]
    assert isinstance(end, ExecReply) and end.exit_code == 3 and end.stdout_b64 == ""   # not sent twice
    # with a stdin pipe: the exec is addressed by its id for input, and only while it runs
    msgs = asyncio.run(collect(ExecRequest(spec.job_id, ("/exit", "0"), stream=True, stdin="pipe")))
    with pytest.raises(NotFound):
        harness.client.input(spec.job_id, b"late", exec_id=msgs[0].exec_id)   # type: ignore[attr-defined]
    wait_for(lambda: not harness.supervisor.execs_by_id and not harness.supervisor.execs_by_fd,
             what="the exec tables to empty")
