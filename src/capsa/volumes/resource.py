"""Named volumes as a :class:`capsa.jobs.resources.JobResource`: one bind per ``--volume NAME[:/path][:ro]``."""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import ClassVar

from capsa.errors import CapsaError, InvalidArgument
from capsa.jobs.model import RunRequest
from capsa.jobs.resources import Grant
from capsa.runtime.spec import BindSpec
from capsa.volumes.manager import VolumeManager

__all__ = ["VolumeResource", "parse_volume_spec"]

log = logging.getLogger("capsa.volumes")


def parse_volume_spec(text: str) -> tuple[str, str, bool]:
    """``NAME[:/path][:ro]`` -> (name, target inside the job, read-only)."""
    parts = text.split(":")
    name = parts[0]
    if not name:
        raise InvalidArgument(f"--volume {text!r}: expected NAME[:/path][:ro]")
    target = f"/volumes/{name}"
    readonly = False
    rest = parts[1:]
    if rest and rest[-1] in ("ro", "rw"):
        readonly = rest.pop() == "ro"
    if len(rest) > 1:
        raise InvalidArgument(f"--volume {text!r}: expected NAME[:/path][:ro]")
    if rest:
        target = rest[0]
        if not target.startswith("/") or "/../" in f"{target}/" or target.rstrip("/") in ("", "/proc", "/dev", "/sys"):
            raise InvalidArgument(f"--volume {text!r}: the path must be absolute, without '..', "
                                  "and not /, /proc, /dev or /sys")
    return name, target, readonly


class VolumeResource:
    before_record: ClassVar[bool] = False
    serves: ClassVar[str] = "volumes"

    def __init__(self, volumes: VolumeManager) -> None:
        self.volumes = volumes

    def validate(self, request: RunRequest) -> None:
        for spec in request.volumes:
            name, _, _ = parse_volume_spec(spec)
            self.volumes.get(name)  # NotFound names the volume

    def acquire(self, job_id: str, request: RunRequest) -> Grant:
        binds = []
        for spec in request.volumes:
            name, target, readonly = parse_volume_spec(spec)
            source = self.volumes.acquire(name, job_id)
            binds.append(BindSpec(source=str(source), target=target, readonly=readonly))
        return Grant(binds=tuple(binds))

    def release(self, job_id: str) -> None:
        try:
            self.volumes.release_all(job_id)
        except CapsaError as exc:   # a restart's reconcile gives them back then
            log.warning("releasing the volumes of job %s: %s", job_id, exc)

    def discard(self, job_id: str) -> None:
        self.release(job_id)

    def reconcile(self, live_job_ids: Collection[str]) -> None:
        self.volumes.reconcile(live_job_ids)
