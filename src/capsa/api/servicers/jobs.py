"""JobService and NodeService servicers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from capsa import __version__
from capsa.api.auth import identity_of
from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from capsa.api.gen.capsa.v1 import jobs_pb2_grpc as pb_grpc
from capsa.api.joblist import JobList
from capsa.api.servicers._base import rpc
from capsa.api.servicers.interactive import exec_events_pb
from capsa.api.streams import BlockingStreams, follow_log
from capsa.api.wire import Encoded
from capsa.errors import InvalidArgument
from capsa.fsm import Engine
from capsa.fsm.queues import WAIT_BUCKETS, QueueStats
from capsa.images.service import ImageService, PullProgress
from capsa.jobs.execs import JobExecs
from capsa.jobs.model import Job, Resources, RunRequest
from capsa.jobs.service import JobService
from capsa.jobs.uploads import UploadEntry
from capsa.logs import Stream, is_finished
from capsa.logs.select import seq_since, seq_tail
from capsa.selectors import check_name, filter_from_pb

__all__ = ["JobServicer", "NodeServicer", "job_to_pb", "pipeline_to_pb", "wait_quantile"]


def job_to_pb(job: Job, ports: Sequence[str] = ()) -> pb.Job:
    r = job.resources
    return pb.Job(
        id=job.id, name=job.name, command=job.command, state=job.state.value,
        exit_code=job.exit_code if job.exit_code is not None else 0, signal=job.signal, reason=job.reason,
        created_at_ns=job.created_ns, started_at_ns=job.started_ns, ended_at_ns=job.ended_ns,
        resources=pb.Resources(max_cpu=r.max_cpu, cpu_cores=r.cpu_cores, max_memory_mb=r.max_memory_mb,
                               max_iobps=r.max_iobps, max_pids=r.max_pids),
        pid=job.pid, ended=job.state.ended, env=job.env, workdir=job.workdir, hostname=job.hostname,
        cgroup=job.cgroup, start_latency_ns=job.start_latency_ns, image=job.image, image_digest=job.image_digest,
        seccomp=job.seccomp, network=job.network, ip=job.ip, volumes=job.volumes,
        gpus=job.gpus, gpu_devices=job.gpu_devices, log_incomplete_bytes=job.log_incomplete_bytes,
        workflow_id=job.workflow_id or "", workflow_job=job.workflow_job or "",
        scheduled_at_ns=job.scheduled_ns, timeout_seconds=job.timeout_ns / 1e9, secret_env_keys=job.secret_env_keys,
        ports=list(ports),
        restart_policy=job.restart_policy, restart_count=job.restart_count, next_restart_at_ns=job.next_restart_ns,
        log_dropped_bytes=job.log_dropped_bytes,
        labels=job.labels, auto_remove=job.auto_remove,
    )


class JobServicer(pb_grpc.JobServiceServicer):
    def __init__(self, jobs: JobService, blocking: BlockingStreams, execs: JobExecs | None = None, *,
                 published: Callable[[str | None], Mapping[str, Sequence[object]]] | None = None) -> None:
        self.jobs = jobs
        self.blocking = blocking
        self.execs = execs
        # job id (None: every job) -> its published ports (capsa.networks), shown by ps and inspect
        self.published = published
        self.listing = JobList(jobs, job_to_pb, published)   # ended jobs' messages kept as encoded

    def _pb(self, job: Job) -> pb.Job:
        ports = self.published(job.id).get(job.id, ()) if self.published and not job.state.ended else ()
        return job_to_pb(job, [str(p) for p in ports])

    @rpc
    def RunJob(self, request: pb.RunJobRequest, context: grpc.ServicerContext) -> pb.Job:
        r = request.resources
        check_name(request.name)   # people's names only; the engine's own carry a '/' and skip this door
        job = self.jobs.run(RunRequest(
            labels=dict(request.labels), auto_remove=request.auto_remove,
            command=tuple(request.command), env=dict(request.env), workdir=request.workdir,
            name=request.name, image=request.image, pull=request.pull or "missing", user=request.user,
            runtime=request.runtime,
            seccomp=request.seccomp or "default", network=request.network or "host",
            volumes=tuple(request.volumes), ports=tuple(request.ports), capsules=tuple(request.capsules), gpus=request.gpus,
            secret_env=dict(request.secret_env), upload_session=request.upload_session,
            schedule=request.schedule, timeout=request.timeout, request_id=request.request_id,
            restart=request.restart, log_max_size=request.log_max_size,
            stdin="tty" if request.tty else "pipe" if request.stdin else "",
            tty_size=(request.tty_rows, request.tty_cols),
            resources=Resources(max_cpu=r.max_cpu, cpu_cores=r.cpu_cores, max_memory_mb=r.max_memory_mb,
                                max_iobps=r.max_iobps, max_pids=r.max_pids),
        ))
        return self._pb(job)

    @rpc
    async def UploadFiles(self, request_iterator: Any, context: Any) -> pb.UploadResult:
        # Writing files blocks: the upload runs on a thread of the bounded stream pool, reading the
        # request stream from the event loop.
        loop = asyncio.get_running_loop()
        ended: list[bool] = []

        def items() -> Any:
            for c in BlockingStreams.requests_in_thread(request_iterator, loop):
                if ended:
                    raise InvalidArgument("upload data after the message marked done")
                yield (UploadEntry(c.entry.path, c.entry.type, c.entry.mode, c.entry.size, c.entry.link_target)
                       if c.HasField("entry") else None), c.data
                if c.done:
                    ended.append(True)

        def complete() -> bool:
            return bool(ended) and not context.cancelled()

        done = await self.blocking.call("UploadFiles", lambda: self.jobs.uploads.receive(items(), complete=complete))
        return pb.UploadResult(session=done.session, files=done.files, dirs=done.dirs, symlinks=done.symlinks,
                               bytes=done.bytes)

    @rpc
    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return job_to_pb(self.jobs.cancel(request.id))

    @rpc
    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        job = self._pb(self.jobs.get(request.id))
        if self.execs is not None:   # the audit trail of `capsa exec` (capsa.jobs.execs)
            job.exec_events.extend(exec_events_pb(self.execs.events(job.id)))
        return job

    @rpc
    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> Encoded:   # a pb.ListJobsResponse, serialized
        # Already serialized: parsing it only for gRPC to serialize it again cost ≈ 2 ms per 1,000 jobs.
        return Encoded(self.listing.page_bytes(all=request.all, limit=request.limit, page_token=request.page_token,
                                               filter=filter_from_pb(request)))

    @rpc
    def StopJob(self, request: pb.StopJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return job_to_pb(self.jobs.stop(request.id, request.grace_seconds if request.HasField("grace_seconds") else None))

    @rpc
    def DeleteJob(self, request: pb.DeleteJobRequest, context: grpc.ServicerContext) -> pb.DeleteJobResponse:
        return pb.DeleteJobResponse(id=self.jobs.remove(request.id, force=request.force))

    @rpc
    async def StreamLogs(self, request: pb.StreamLogsRequest, context: Any) -> Any:
        loop = asyncio.get_running_loop()
        job = await loop.run_in_executor(None, self.jobs.get, request.id)
        log_dir = self.jobs.jobs_dir / job.id / "logs"
        if request.stream not in (0, 1, 2):
            raise InvalidArgument(f"stream {request.stream}: 0 (both), 1 (stdout) or 2 (stderr)")
        if request.until_ns and request.since_ns and request.until_ns <= request.since_ns:
            raise InvalidArgument("until must be after since")
        # A job that ended without an end marker (lost while the supervisor was down) has
        # nothing more coming: following it would wait forever. Until a time means history only.
        live = request.follow and not request.until_ns and not (job.state.ended and not is_finished(log_dir))
        from_seq, skip = await loop.run_in_executor(None, lambda: log_start(log_dir, request))
        # an attached reader keeps an --rm job until it has read the end (JobService.hold)
        with self.jobs.hold(job.id):
            async for chunk in follow_log(log_dir, from_seq=from_seq, live=live):
                if request.until_ns and chunk.timestamp_ns >= request.until_ns:
                    break
                if request.stream and chunk.stream not in (request.stream, Stream.NOTICE):
                    continue
                data = chunk.data
                if skip and chunk.seq == from_seq:
                    data = data[skip:]
                    if not data:
                        continue
                yield pb.LogChunk(seq=chunk.seq, stream=int(chunk.stream), timestamp_ns=chunk.timestamp_ns, data=data)
            if request.follow and not request.until_ns:
                # The log's end marker can beat the exit event by a few ms; callers read the
                # exit code right after the stream ends, so let the database catch up first.
                ended = await loop.run_in_executor(None, lambda: self.jobs.wait_ended(job.id, timeout=10))
                if request.final_job:
                    yield pb.LogChunk(job=job_to_pb(ended))


def log_start(log_dir: Path, request: pb.StreamLogsRequest) -> tuple[int, int]:
    """``(from_seq, bytes to skip in that chunk)`` for the request's from_seq, since and tail, all applied."""
    from_seq, skip = max(1, request.from_seq), 0
    if request.since_ns:
        from_seq = max(from_seq, seq_since(log_dir, request.since_ns))
    if request.tail < 0:   # no history at all: only what is written from now on
        from_seq = max(from_seq, seq_since(log_dir, 2**63 - 1))
    elif request.tail > 0:
        streams = None if not request.stream else frozenset({request.stream})
        tail_seq, tail_skip = seq_tail(log_dir, request.tail, streams)
        if tail_seq > from_seq or (tail_seq == from_seq and tail_skip):
            from_seq, skip = tail_seq, tail_skip
    return from_seq, skip


def wait_quantile(q: QueueStats, quantile: float) -> float:
    """The upper bound of the wait bucket holding ``quantile`` of the runs (0 when none waited).

    Buckets, not samples, are all the engine keeps; past the last bound the last bound is reported.
    """
    if q.waited_count == 0:
        return 0.0
    rank = quantile * q.waited_count
    for bound, cumulative in zip(WAIT_BUCKETS, q.waited_buckets, strict=True):
        if cumulative >= rank:
            return float(bound)
    return float(WAIT_BUCKETS[-1])


def pipeline_to_pb(queues: list[QueueStats], pulls: list[PullProgress]) -> pb.Pipeline:
    return pb.Pipeline(
        queues=[pb.QueueInfo(name=q.name, depth=q.depth, in_flight=q.in_flight, limit=q.limit,
                             waited_count=q.waited_count, waited_sum_seconds=q.waited_sum_s,
                             wait_p50_seconds=wait_quantile(q, 0.5), wait_p99_seconds=wait_quantile(q, 0.99))
                for q in queues],
        pulls=[pb.PullInFlight(ref=p.ref, run_id=p.run_id, state=p.state, phase=p.phase,
                               layers_done=p.layers_done, layers_total=p.layers_total, bytes_done=p.bytes_done,
                               bytes_total=p.bytes_total, started_at_ns=p.started_at_ns) for p in pulls])


class NodeServicer(pb_grpc.NodeServiceServicer):
    def __init__(self, *, cgroup_version: int, snapshotter: str, engine: Engine, images: ImageService) -> None:
        self.cgroup_version = cgroup_version
        self.snapshotter = snapshotter
        self.engine = engine
        self.images = images

    @rpc
    def GetPipeline(self, request: Any, context: grpc.ServicerContext) -> pb.Pipeline:
        return pipeline_to_pb(self.engine.queue_stats(), self.images.pulls_in_flight())

    @rpc
    def GetVersion(self, request: Any, context: grpc.ServicerContext) -> pb.VersionInfo:
        return pb.VersionInfo(version=__version__, cgroup_version=f"v{self.cgroup_version}",
                              kernel=os.uname().release, snapshotter=self.snapshotter)

    @rpc
    def WhoAmI(self, request: Any, context: grpc.ServicerContext) -> pb.Identity:
        who = identity_of(context)
        return pb.Identity(common_name=who.common_name, role=who.role.value)
