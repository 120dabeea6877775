"""A job's network as a :class:`capsa.jobs.resources.JobResource`: a namespace to join, an address to show."""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import ClassVar

from capsa.errors import CapsaError
from capsa.jobs.model import RunRequest
from capsa.jobs.resources import Grant
from capsa.networks.manager import NetworkManager
from capsa.networks.model import HOST

__all__ = ["NetworkResource"]

log = logging.getLogger("capsa.networks")


class NetworkResource:
    before_record: ClassVar[bool] = False
    serves: ClassVar[str] = "network"

    def __init__(self, networks: NetworkManager) -> None:
        self.networks = networks

    def validate(self, request: RunRequest) -> None:
        """Nothing to check early: an unknown network name is reported by ``acquire`` (NotFound)."""

    def acquire(self, job_id: str, request: RunRequest) -> Grant:
        if request.network in ("", HOST):
            return Grant()
        att = self.networks.attach(job_id, request.network)
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
