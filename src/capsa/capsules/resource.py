"""Capsules given at start (``capsa run --capsule``) as a :class:`capsa.jobs.resources.JobResource`.

Validation resolves the requests (a conflict fails the request, not a job); acquiring records
each member's lease before the job mounts it; release forgets the job's attachments, including
those attached live (``capsa capsule attach``), since the job's mount namespace is gone.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import ClassVar

from capsa.capsules.manager import CapsuleManager
from capsa.jobs.model import RunRequest
from capsa.jobs.resources import Grant

__all__ = ["CapsuleResource"]


class CapsuleResource:
    before_record: ClassVar[bool] = False
    serves: ClassVar[str] = "capsules"

    def __init__(self, manager: CapsuleManager) -> None:
        self.manager = manager

    def validate(self, request: RunRequest) -> None:
        if request.capsules:
            self.manager.plan_start(request.capsules, image=bool(request.image))

    def acquire(self, job_id: str, request: RunRequest) -> Grant:
        if not request.capsules:
            return Grant()
        return Grant(binds=self.manager.prepare_start(job_id, request.capsules, image=bool(request.image)))

    def release(self, job_id: str) -> None:
        self.manager.release_job(job_id)   # never raises

    def discard(self, job_id: str) -> None:
        self.release(job_id)

    def reconcile(self, live_job_ids: Collection[str]) -> None:
        self.manager.reconcile(live_job_ids)
