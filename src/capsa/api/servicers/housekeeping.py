"""HousekeepingService servicer (thin: capsa.housekeeping does the work)."""

from __future__ import annotations

import grpc

from capsa.api.gen.capsa.v1 import housekeeping_pb2 as pb
from capsa.api.gen.capsa.v1 import housekeeping_pb2_grpc as pb_grpc
from capsa.api.servicers._base import rpc
from capsa.housekeeping import Housekeeper, parse_state_filter
from capsa.jobs.schedule import parse_duration

__all__ = ["HousekeepingServicer"]


class HousekeepingServicer(pb_grpc.HousekeepingServiceServicer):
    def __init__(self, housekeeper: Housekeeper) -> None:
        self.housekeeper = housekeeper

    @rpc
    def Prune(self, request: pb.PruneRequest, context: grpc.ServicerContext) -> pb.PruneResponse:
        age = parse_duration(request.older_than, what="--older-than") if request.older_than else 0.0
        states = parse_state_filter(list(request.states))
        # A state filter narrows the jobs only; without one, finished fsm history of the same age goes too.
        result = self.housekeeper.prune(older_than_s=age, states=states,
                                        fsm_older_than_s=None if states else age,
                                        dry_run=request.dry_run)
        return pb.PruneResponse(job_ids=result.jobs, bytes_freed=result.bytes_freed, fsm_runs_removed=result.fsm_runs)
