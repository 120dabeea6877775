"""InteractiveService: processes inside running jobs (``capsa exec``), ADR-0013."""

from __future__ import annotations

import base64
from typing import Any

from capsa.api.auth import identity_of
from capsa.api.gen.capsa.v1 import interactive_pb2 as pb
from capsa.api.gen.capsa.v1 import interactive_pb2_grpc as pb_grpc
from capsa.api.gen.capsa.v1 import jobs_pb2
from capsa.api.servicers._base import rpc
from capsa.api.streams import BlockingStreams
from capsa.jobs.execs import ExecEvent, JobExecs

__all__ = ["InteractiveServicer", "exec_events_pb"]


def exec_events_pb(events: list[ExecEvent]) -> list[jobs_pb2.ExecEvent]:
    return [jobs_pb2.ExecEvent(who=e.who, command=e.command, at_ns=e.at_ns, user=e.user, ended=e.ended,
                               exit_code=e.exit_code or 0, ended_at_ns=e.ended_ns, error=e.error) for e in events]


class InteractiveServicer(pb_grpc.InteractiveServiceServicer):
    def __init__(self, execs: JobExecs, blocking: BlockingStreams) -> None:
        self.execs = execs
        self.blocking = blocking

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
