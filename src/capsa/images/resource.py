"""An image's root filesystem as a :class:`capsa.jobs.resources.JobResource`.

Acquired before the job is recorded (``before_record``): the image's config sets the job's
command, environment, working directory and user, and a failed pull leaves no job behind.
The writable snapshot outlives the job (``release`` only marks it unused) and goes with the
job's record (``discard``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Collection
from typing import ClassVar

from capsa.errors import CapsaError
from capsa.images.service import ImageService
from capsa.jobs.model import RunRequest
from capsa.jobs.resources import Grant
from capsa.runtime.spec import MountSpec

__all__ = ["ImageRootResource"]

log = logging.getLogger("capsa.images")


class ImageRootResource:
    before_record: ClassVar[bool] = True
    serves: ClassVar[str] = "image"

    def __init__(self, images: ImageService) -> None:
        self.images = images

    def validate(self, request: RunRequest) -> None:
        """Nothing to check early: the pull policy and the image itself are checked when acquired."""

    def acquire(self, job_id: str, request: RunRequest) -> Grant:
        if not request.image:
            return Grant()
        rootfs = self.images.rootfs_for_job(request.image, job_id, pull=request.pull)
        return Grant(root_mounts=tuple(MountSpec(m.type, m.source, tuple(m.options)) for m in rootfs.mounts),
                     image_config=rootfs.image.run_config,
                     recorded={"image": rootfs.image.ref, "image_digest": rootfs.image.digest})

    def release(self, job_id: str) -> None:
        try:
            self.images.job_ended(job_id)
        except (CapsaError, sqlite3.Error) as exc:   # reconcile_job_roots marks it after a restart
            log.warning("marking the root of job %s unused: %s", job_id, exc)

    def discard(self, job_id: str) -> None:
        try:
            self.images.job_removed(job_id)
        except (CapsaError, sqlite3.Error) as exc:   # `capsa image prune` removes what is left
            log.warning("removing the root of job %s: %s", job_id, exc)

    def reconcile(self, live_job_ids: Collection[str]) -> None:
        self.images.reconcile_job_roots(live_job_ids)
