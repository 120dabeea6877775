"""InteractiveService: processes inside running jobs (``capsa exec``) and attaching to them, ADR-0013."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import threading
from typing import Any

from capsa.api.auth import identity_of
from capsa.api.gen.capsa.v1 import interactive_pb2 as pb
from capsa.api.gen.capsa.v1 import interactive_pb2_grpc as pb_grpc
from capsa.api.gen.capsa.v1 import jobs_pb2
from capsa.api.servicers._base import rpc
from capsa.api.streams import BlockingStreams, follow_log, until_set
from capsa.errors import CapsaError, InvalidArgument
from capsa.jobs.attach import JobAttach
from capsa.jobs.execs import ExecEvent, ExecStreamStarted, JobExecs
from capsa.logs import is_finished
from capsa.runtime.protocol import ExecOutput, ExecReply

__all__ = ["InteractiveServicer", "exec_events_pb"]

log = logging.getLogger("capsa.api")
# An attached terminal's output is looked for at least this often (the log is its one source).
_ATTACH_POLL_S = 0.01


def exec_events_pb(events: list[ExecEvent]) -> list[jobs_pb2.ExecEvent]:
    return [jobs_pb2.ExecEvent(who=e.who, command=e.command, at_ns=e.at_ns, user=e.user, ended=e.ended,
                               exit_code=e.exit_code or 0, ended_at_ns=e.ended_ns, error=e.error) for e in events]


class InteractiveServicer(pb_grpc.InteractiveServiceServicer):
    def __init__(self, execs: JobExecs, blocking: BlockingStreams, attach: JobAttach) -> None:
        self.execs = execs
        self.blocking = blocking
        self.attach = attach

    @rpc
    async def Exec(self, request: pb.ExecRequest, context: Any) -> pb.ExecResult:
        who = identity_of(context).common_name
        # The process may run for as long as its job: it holds a thread of the bounded stream
        # pool (refused at once when all are busy), never one of the unary pool.
        reply = await self.blocking.call("Exec", lambda: self.execs.exec(
            request.job_id, list(request.command), who=who, env=dict(request.env), user=request.user,
            workdir=request.workdir))
        return pb.ExecResult(exit_code=reply.exit_code, signal=reply.signal,
                             stdout=base64.b64decode(reply.stdout_b64), stderr=base64.b64decode(reply.stderr_b64),
                             oom_killed=reply.oom_killed, truncated=reply.truncated,
                             start_latency_ns=reply.exec_latency_ns)

    @rpc
    async def Attach(self, request_iterator: Any, context: Any) -> Any:
        loop = asyncio.get_running_loop()
        requests = request_iterator.__aiter__()
        try:
            first = await requests.__anext__()
        except StopAsyncIteration:
            return
        open_ = functools.partial(self.attach.open, first.job_id, allow_ended=first.from_start)
        att = await loop.run_in_executor(None, open_)
        yield pb.AttachOutput(attached=True, tty=att.tty)
        stop = threading.Event()
        detached = asyncio.Event()
        pump: asyncio.Task[None] | None = None
        if not att.ended:
            pump = asyncio.create_task(self._pump_input(att.job_id, 0, att.tty, first, requests, stop, detached))
        try:
            # held like an attached `logs -f`: an --rm job stays until its end was read
            with self.attach.jobs.hold(att.job_id):
                # an ended job's log without its end record (lost with a supervisor) has nothing more coming
                live = not att.ended or is_finished(att.log_dir)
                chunks = follow_log(att.log_dir, from_seq=1 if first.from_start else att.next_seq,
                                    live=live, max_interval=_ATTACH_POLL_S)
                async for chunk in until_set(chunks, detached):
                    yield pb.AttachOutput(data=chunk.data, stream=int(chunk.stream))
                if detached.is_set():
                    return
                ended = await loop.run_in_executor(None, lambda: self.attach.jobs.wait_ended(att.job_id, timeout=10))
            yield pb.AttachOutput(ended=True, exit_code=ended.exit_code or 0, signal=ended.signal,
                                  state=ended.state.value, reason=ended.reason)
        finally:
            stop.set()
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(BaseException):
                    await pump

    @rpc
    async def ExecStream(self, request_iterator: Any, context: Any) -> Any:
        requests = request_iterator.__aiter__()
        try:
            first = await requests.__anext__()
        except StopAsyncIteration:
            return
        r = first.start
        who = identity_of(context).common_name
        stdin = "tty" if r.tty else "pipe" if r.stdin else ""
        if r.rows < 0 or r.cols < 0:
            raise InvalidArgument(f"terminal size {r.rows}x{r.cols} is negative")
        items = self.execs.exec_stream(r.job_id, list(r.command), who=who, env=dict(r.env), user=r.user,
                                       workdir=r.workdir, stdin=stdin, tty_size=(r.rows, r.cols))
        stop = threading.Event()
        detached = asyncio.Event()
        pump: asyncio.Task[None] | None = None
        try:
            async for item in until_set(items, detached):
                if isinstance(item, ExecStreamStarted):
                    yield pb.ExecOutput(attached=True, tty=item.tty)
                    if stdin:
                        pump = asyncio.create_task(self._pump_input(
                            item.job_id, item.exec_id, item.tty, first, requests, stop, detached))
                elif isinstance(item, ExecOutput):
                    yield pb.ExecOutput(data=base64.b64decode(item.data_b64), stream=item.stream)
                elif isinstance(item, ExecReply):
                    yield pb.ExecOutput(ended=True, exit_code=item.exit_code, signal=item.signal,
                                        oom_killed=item.oom_killed, start_latency_ns=item.exec_latency_ns)
        finally:
            stop.set()
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(BaseException):
                    await pump
            await items.aclose()

    async def _pump_input(self, job_id: str, exec_id: int, tty: bool, first: Any, requests: Any,
                          stop: threading.Event, detached: asyncio.Event) -> None:
        """Stdin and resizes, in order, until the client ends its side (or detaches) or the job ends.

        ``exec_id`` > 0: to that streamed exec in the job rather than the job itself. Window sizes
        from a client at a terminal are dropped for a stdin pipe (``tty`` false): nothing to resize.
        A ``detach`` message is acted on only here, after every write before it returned, so keys
        typed just before the detach sequence reach the job; a client-side cancel could drop them.
        """
        loop = asyncio.get_running_loop()
        msg = first
        open_ = True
        try:
            while True:
                if msg.detach:
                    detached.set()
                    return
                if tty and msg.rows > 0 and msg.cols > 0:
                    resize = functools.partial(self.attach.resize, job_id, msg.rows, msg.cols, exec_id=exec_id)
                    await loop.run_in_executor(None, resize)
                if open_ and (msg.stdin or msg.stdin_eof):
                    write = functools.partial(self.attach.write, job_id, bytes(msg.stdin), eof=msg.stdin_eof,
                                              exec_id=exec_id, stop=stop.is_set)
                    open_ = await loop.run_in_executor(None, write)
                msg = await requests.__anext__()
        except StopAsyncIteration:
            return
        except CapsaError as exc:   # the job ended under us: its output side ends the call
            log.debug("attach input to %s stopped: %s", job_id, exc)
