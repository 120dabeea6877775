"""Whole GPUs as a :class:`capsa.jobs.resources.JobResource`: device nodes, cgroup rules, variables, libraries."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Collection
from typing import ClassVar

from capsa.errors import CapsaError
from capsa.gpus.allocator import GpuAllocator
from capsa.gpus.discovery import library_binds
from capsa.jobs.model import RunRequest
from capsa.jobs.resources import Grant

__all__ = ["GpuResource"]

log = logging.getLogger("capsa.gpus")


class GpuResource:
    before_record: ClassVar[bool] = False
    serves: ClassVar[str] = "gpus"

    def __init__(self, gpus: GpuAllocator) -> None:
        self.gpus = gpus

    def validate(self, request: RunRequest) -> None:
        if request.gpus:
            self.gpus.check_request(request.gpus)   # more than the node has can never start

    def acquire(self, job_id: str, request: RunRequest) -> Grant:
        if not request.gpus:
            return Grant()
        grant = self.gpus.allocate(job_id, request.gpus)
        # A job on the host's userland already sees the libraries below /usr, /lib...: only others are bound.
        return Grant(devices=grant.devices, device_allow=grant.device_allow, env=dict(grant.env),
                     binds=library_binds(grant.libraries, host_root=not request.image),
                     recorded={"gpu_devices": grant.names})

    def release(self, job_id: str) -> None:
        try:
            self.gpus.release(job_id)
        except (CapsaError, sqlite3.Error) as exc:   # a restart's reconcile frees them then
            log.warning("releasing the GPUs of job %s: %s", job_id, exc)

    def discard(self, job_id: str) -> None:
        self.release(job_id)

    def reconcile(self, live_job_ids: Collection[str]) -> None:
        self.gpus.reconcile(live_job_ids)
