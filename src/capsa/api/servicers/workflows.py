"""WorkflowService servicer (Joblet ADR-002: separate from JobService)."""

from __future__ import annotations

import grpc

from capsa.api.gen.capsa.v1 import workflows_pb2 as pb
from capsa.api.gen.capsa.v1 import workflows_pb2_grpc as pb_grpc
from capsa.api.servicers._base import rpc
from capsa.workflows import Workflow, WorkflowService

__all__ = ["WorkflowServicer", "workflow_to_pb"]


def workflow_to_pb(workflow: Workflow) -> pb.Workflow:
    return pb.Workflow(
        id=workflow.id, name=workflow.name, description=workflow.description, state=workflow.state.value,
        reason=workflow.reason, created_at_ns=workflow.created_ns, started_at_ns=workflow.started_ns,
        ended_at_ns=workflow.ended_ns, max_parallel=workflow.max_parallel, ended=workflow.state.ended,
        run_id=workflow.run_id, labels=workflow.labels,
        jobs=[pb.WorkflowJob(
            name=j.name, state=j.state.value, job_id=j.job_id, reason=j.reason, requires=j.requires,
            depends_on=j.depends_on, exit_code=j.exit_code or 0, has_exit_code=j.exit_code is not None,
            started_at_ns=j.started_ns, ended_at_ns=j.ended_ns,
        ) for j in workflow.jobs],
    )


class WorkflowServicer(pb_grpc.WorkflowServiceServicer):
    def __init__(self, workflows: WorkflowService) -> None:
        self.workflows = workflows

    @rpc
    def SubmitWorkflow(self, request: pb.SubmitWorkflowRequest, context: grpc.ServicerContext) -> pb.Workflow:
        return workflow_to_pb(self.workflows.submit(request.yaml, base_dir=request.base_dir,
                                                    source=request.source or "workflow",
                                                    request_id=request.request_id, labels=dict(request.labels)))

    @rpc
    def ListWorkflows(self, request: pb.ListWorkflowsRequest, context: grpc.ServicerContext) -> pb.ListWorkflowsResponse:
        return pb.ListWorkflowsResponse(workflows=[workflow_to_pb(w) for w in self.workflows.list(limit=request.limit)])

    @rpc
    def GetWorkflow(self, request: pb.GetWorkflowRequest, context: grpc.ServicerContext) -> pb.Workflow:
        return workflow_to_pb(self.workflows.get(request.id))

    @rpc
    def CancelWorkflow(self, request: pb.CancelWorkflowRequest, context: grpc.ServicerContext) -> pb.Workflow:
        return workflow_to_pb(self.workflows.cancel(request.id))
