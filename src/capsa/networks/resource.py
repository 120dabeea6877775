"""A job's network as a :class:`capsa.jobs.resources.JobResource`: a namespace to join, an address to show."""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import ClassVar

from capsa.errors import CapsaError, InvalidArgument
from capsa.jobs.model import RunRequest
from capsa.jobs.resources import Grant
from capsa.networks._ports import parse_ports
from capsa.networks.manager import NetworkManager
from capsa.networks.model import HOST, NONE

__all__ = ["NetworkResource"]

log = logging.getLogger("capsa.networks")


class NetworkResource:
    before_record: ClassVar[bool] = False
    serves: ClassVar[str] = "network"
    lends_only_when_asked: ClassVar[bool] = True   # host networking borrows nothing (acquire below)

    def __init__(self, networks: NetworkManager) -> None:
        self.networks = networks

    def validate(self, request: RunRequest) -> None:
        """Port specs and their network mode, before anything exists; an unknown network name is
        reported by ``acquire`` (NotFound)."""
        if request.ports:
            if request.network in ("", HOST, NONE):
                raise InvalidArgument(f"-p: ports cannot be published with --network {request.network or HOST}"
                                      " (use bridge, isolated or a named network)")
            parse_ports(request.ports)

    def acquire(self, job_id: str, request: RunRequest) -> Grant:
        if request.network in ("", HOST):
            return Grant()
        att = self.networks.attach(job_id, request.network)
        if request.ports:
            try:
                self.networks.publish(job_id, parse_ports(request.ports))
            except BaseException:
                self.release(job_id)
                raise
        return Grant(netns_path=att.netns_path, recorded={"ip": att.ip} if att.ip else {})

    def release(self, job_id: str) -> None:
        try:
            self.networks.detach(job_id)
        except CapsaError as exc:
            log.warning("releasing the network of job %s: %s", job_id, exc)

    def discard(self, job_id: str) -> None:
        self.release(job_id)

    def reconcile(self, live_job_ids: Collection[str]) -> None:
        self.networks.reconcile(live_job_ids)
