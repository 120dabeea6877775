"""ClusterService servicer: thin adapters from the API to :mod:`capsa.cluster.pool`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from capsa.api.gen.capsa.v1 import cluster_pb2 as cpb
from capsa.api.gen.capsa.v1 import cluster_pb2_grpc as cpb_grpc
from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from capsa.api.servicers._base import rpc
from capsa.api.servicers.jobs import job_to_pb
from capsa.api.streams import follow_log
from capsa.errors import FailedPrecondition, InvalidArgument
from capsa.logs import is_finished

__all__ = ["ClusterServicer"]


def pool_job_to_pb(job: Any) -> cpb.PoolJob:
    return cpb.PoolJob(
        id=job.id, name=job.spec.get("name", ""), command=job.spec.get("command") or [], state=job.state,
        node=job.node, local_id=job.local_id, attempt=job.attempt, restart=job.restart, reason=job.reason,
        exit_code=job.exit_code if job.exit_code is not None else 0, ended=job.status.ended,
        constraints=job.constraints, history=job.history, workflow_id=job.workflow_id,
        workflow_job=job.workflow_job, submitted_at_ns=job.submitted_ns, placed_at_ns=job.placed_ns,
        started_at_ns=job.started_ns, ended_at_ns=job.ended_ns, image=job.spec.get("image", ""),
        not_before_ns=job.not_before_ns)


class ClusterServicer(cpb_grpc.ClusterServiceServicer):
    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster   # capsa.cluster.ClusterComponent, or None on a standalone node

    def _pool(self) -> Any:
        if self.cluster is None:
            raise FailedPrecondition("this daemon is not part of a pool (no cluster section in server.yaml)")
        return self.cluster.pool

    @rpc
    def ListNodes(self, request: cpb.ListNodesRequest, context: grpc.ServicerContext) -> cpb.ListNodesResponse:
        return cpb.ListNodesResponse(nodes=[cpb.Node(
            name=v.record.name, address=v.record.address, state=v.state, cpus=v.record.cpus,
            memory_mb=v.record.memory_mb, gpus=v.record.gpus, labels=v.record.labels,
            snapshotter=v.record.snapshotter, images=v.record.images, capsules=v.record.capsules, jobs=v.jobs,
            max_jobs=v.record.max_jobs, registered_at_ns=v.record.registered_ns) for v in self._pool().nodes()])

    @rpc
    def SubmitPoolJob(self, request: cpb.SubmitPoolJobRequest, context: grpc.ServicerContext) -> cpb.PoolJob:
        from capsa.cluster.spec import not_before_ns, spec_from_pb

        pool = self._pool()
        from capsa.jobs.secrets import validate_env_names

        spec = spec_from_pb(request.job)
        secret_env = dict(request.job.secret_env)
        validate_env_names(spec["env"], secret_env)
        return pool_job_to_pb(pool.submit(spec, constraints=dict(request.constraints), restart=request.restart,
                                          max_restarts=request.max_restarts, not_before_ns=not_before_ns(request.job),
                                          secret_env=secret_env))

    @rpc
    def ListPoolJobs(self, request: cpb.ListPoolJobsRequest,
                     context: grpc.ServicerContext) -> cpb.ListPoolJobsResponse:
        return cpb.ListPoolJobsResponse(jobs=[pool_job_to_pb(j) for j in self._pool().list(all=request.all)])

    @rpc
    def GetPoolJob(self, request: cpb.GetPoolJobRequest, context: grpc.ServicerContext) -> cpb.PoolJob:
        pool = self._pool()
        job = pool.get(request.id)
        out = pool_job_to_pb(job)
        if request.local:
            local = pool.local_job(job)
            if local is not None:
                out.local.CopyFrom(local if isinstance(local, pb.Job) else job_to_pb(local))
        return out

    @rpc
    def RemovePoolJobs(self, request: cpb.RemovePoolJobsRequest,
                       context: grpc.ServicerContext) -> cpb.RemovePoolJobsResponse:
        pool = self._pool()
        return cpb.RemovePoolJobsResponse(removed=[pool.remove(i, force=request.force) for i in request.ids])

    @rpc
    def PrunePool(self, request: cpb.PrunePoolRequest, context: grpc.ServicerContext) -> cpb.PrunePoolResponse:
        if request.older_than_seconds < 0:
            raise InvalidArgument("older_than_seconds must not be negative")
        pruned = self._pool().prune(older_than_s=request.older_than_seconds, dry_run=request.dry_run)
        return cpb.PrunePoolResponse(job_ids=pruned.job_ids, workflow_ids=pruned.workflow_ids)

    @rpc
    def StopPoolJob(self, request: cpb.StopPoolJobRequest, context: grpc.ServicerContext) -> cpb.PoolJob:
        return pool_job_to_pb(self._pool().stop(request.id, request.grace_seconds))

    @rpc
    async def PoolLogs(self, request: cpb.PoolLogsRequest, context: Any) -> Any:
        """The job's output from the node that runs it: read here, or relayed from the owner over mTLS.

        Async, like StreamLogs: a follow holds no thread while it waits (ADR 0011).
        """
        loop = asyncio.get_running_loop()
        pool = self._pool()
        job = await loop.run_in_executor(None, pool.get, request.id)
        while request.follow and not job.local_id and not job.status.ended:
            await asyncio.sleep(0.1)   # not started yet: its output will be on the node that starts it
            job = await loop.run_in_executor(None, pool.get, job.id)
        if not job.local_id:
            return
        if job.node == self.cluster.node.name:
            chunks = self._local_logs(job.local_id, request.follow, request.from_seq)
        else:
            address = await loop.run_in_executor(None, pool.address_of, job.node)
            chunks = self.cluster.dialer.logs(address, job.id, job.local_id, follow=request.follow,
                                              from_seq=request.from_seq)
        async for chunk in chunks:
            yield chunk

    @rpc
    def SubmitPoolWorkflow(self, request: cpb.SubmitPoolWorkflowRequest,
                           context: grpc.ServicerContext) -> cpb.PoolWorkflow:
        wf = self._pool().submit_workflow(request.yaml, base_dir=request.base_dir,
                                          constraints=dict(request.constraints))
        return cpb.PoolWorkflow(id=wf.id, name=wf.name, state=wf.state, submitted_at_ns=wf.submitted_ns)

    @rpc
    def GetPoolWorkflow(self, request: cpb.GetPoolWorkflowRequest, context: grpc.ServicerContext) -> cpb.PoolWorkflow:
        wf, jobs = self._pool().workflow(request.id)
        from capsa.cluster.workflows import parse_workflow

        order = parse_workflow(wf)[1].order
        out = []
        for name in order:
            job = jobs.get(name)
            state = "SKIPPED" if name in wf.skipped else (job.state if job else "WAITING")
            out.append(cpb.PoolWorkflowJob(name=name, job_id=job.id if job else "", state=state,
                                           node=job.node if job else "",
                                           reason=wf.skipped.get(name, job.reason if job else "")))
        return cpb.PoolWorkflow(id=wf.id, name=wf.name, state=wf.state, jobs=out, submitted_at_ns=wf.submitted_ns,
                                ended_at_ns=wf.ended_ns)

    @rpc
    def NodeStopJob(self, request: cpb.NodeStopJobRequest, context: grpc.ServicerContext) -> cpb.NodeStopJobResponse:
        self._pool().check_owned(request.pool_job_id, request.id)
        return cpb.NodeStopJobResponse(state=self.cluster.node.stop_local(request.id, request.grace_seconds))

    @rpc
    def NodeGetJob(self, request: cpb.NodeGetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        self._pool().check_owned(request.pool_job_id, request.id)
        return job_to_pb(self.cluster.node.jobs.get(request.id))

    @rpc
    async def NodeLogs(self, request: cpb.NodeLogsRequest, context: Any) -> Any:
        await asyncio.get_running_loop().run_in_executor(
            None, self._pool().check_owned, request.pool_job_id, request.id)
        async for chunk in self._local_logs(request.id, request.follow, request.from_seq):
            yield chunk

    async def _local_logs(self, local_id: str, follow: bool, from_seq: int) -> AsyncIterator[pb.LogChunk]:
        jobs = self.cluster.node.jobs
        job = await asyncio.get_running_loop().run_in_executor(None, jobs.get, local_id)
        log_dir = jobs.jobs_dir / job.id / "logs"
        # As StreamLogs: a job that ended without an end marker has nothing more coming.
        live = follow and not (job.state.ended and not is_finished(log_dir))
        async for c in follow_log(log_dir, from_seq=max(1, from_seq), live=live):
            yield pb.LogChunk(seq=c.seq, stream=int(c.stream), timestamp_ns=c.timestamp_ns, data=c.data)
