"""What a job borrows from the node while it runs, behind one small interface.

A network, volumes, GPUs, capsules and an image's root filesystem are all lent the
same way, so :class:`capsa.jobs.service.JobService` handles them with one loop:

* ``validate(request)`` at submission refuses what can never be granted (unknown
  volume, more GPUs than the node has, conflicting capsules) before a job exists;
* ``acquire(job_id, request) -> Grant`` just before the job's spec goes to the
  supervisor; the :class:`Grant` says what stage two must mount, join or set;
* ``release(job_id)`` when the job ends, fails to start, or is canceled. It is
  idempotent and never raises, so every exit path may call it without care;
* ``discard(job_id)`` when the job's record is deleted: drop what ``release`` kept
  for an ended job (an image root's writable layer); also idempotent, never raises;
* ``reconcile(live_job_ids)`` once after a daemon restart: give back what jobs that
  are no longer live held, repair what the live ones need.

Each package implements its own adapter next to its domain code
(``capsa.networks.resource``, ``capsa.volumes.resource``, ``capsa.gpus.resource``,
``capsa.capsules.resource``, ``capsa.images.resource``); the daemon (``capsa.daemon``)
hands them to the job service. This module imports none of them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from capsa.jobs.model import RunRequest
from capsa.runtime.spec import BindSpec, DeviceSpec, MountSpec

__all__ = ["RECORDED_COLUMNS", "Grant", "JobResource", "acquire_all", "release_all"]

log = logging.getLogger("capsa.jobs")

# Job columns a grant may fill (what `inspect` shows of it); anything else is a programming error.
RECORDED_COLUMNS = frozenset({"ip", "gpu_devices", "image", "image_digest"})


@dataclass(frozen=True)
class Grant:
    """What one resource gives one job, as stage two needs it."""

    binds: tuple[BindSpec, ...] = ()
    netns_path: str | None = None               # a network namespace to join
    devices: tuple[DeviceSpec, ...] = ()        # nodes in the job's /dev
    device_allow: tuple[str, ...] = ()          # device-cgroup rules for them
    env: Mapping[str, str] = field(default_factory=dict)   # under the user's own -e values
    root_mounts: tuple[MountSpec, ...] = ()     # the job's root (empty: the host's userland)
    image_config: Mapping[str, Any] | None = None   # Entrypoint, Cmd, Env, WorkingDir, User of the root's image
    recorded: Mapping[str, Any] = field(default_factory=dict)  # RECORDED_COLUMNS -> value, kept on the job row

    def __post_init__(self) -> None:
        unknown = set(self.recorded) - RECORDED_COLUMNS
        if unknown:
            raise ValueError(f"a grant cannot record {sorted(unknown)} on the job")

    def merged(self, other: Grant) -> Grant:
        """Both grants; two network namespaces, roots or image configs cannot be combined."""
        for name in ("netns_path", "image_config"):
            if getattr(self, name) is not None and getattr(other, name) is not None:
                raise ValueError(f"two resources both set {name} for one job")
        if self.root_mounts and other.root_mounts:
            raise ValueError("two resources both give the job a root filesystem")
        return Grant(
            binds=self.binds + other.binds,
            netns_path=self.netns_path if self.netns_path is not None else other.netns_path,
            devices=self.devices + other.devices,
            device_allow=self.device_allow + other.device_allow,
            env={**self.env, **other.env},
            root_mounts=self.root_mounts or other.root_mounts,
            image_config=self.image_config if self.image_config is not None else other.image_config,
            recorded={**self.recorded, **other.recorded},
        )


class JobResource(Protocol):
    """Something a job borrows from the node (see the module docstring for the contract)."""

    # True for a resource that shapes the job's own record (an image root's config sets the
    # command, environment, working directory and user): it is acquired before the job is
    # recorded, so its failure leaves no job behind. The others are acquired after, so their
    # failure leaves a FAILED job that says why.
    before_record: ClassVar[bool]
    # The RunRequest field it serves ("network", "volumes", "gpus", "capsules", "image"): a request
    # asking for one that no resource serves is refused ("this daemon has no ... support").
    serves: ClassVar[str]
    # Optional (absent means False): True when ``acquire`` borrows nothing for a request that does not
    # ask for ``serves`` (requests.asks_for, e.g. host networking). The job service then skips
    # ``release`` at the exit of a job whose recorded row shows no such ask (ADR-0017).
    # lends_only_when_asked: ClassVar[bool]

    def validate(self, request: RunRequest) -> None: ...

    def acquire(self, job_id: str, request: RunRequest) -> Grant: ...

    def release(self, job_id: str) -> None: ...

    def discard(self, job_id: str) -> None: ...

    def reconcile(self, live_job_ids: Collection[str]) -> None: ...


def acquire_all(resources: Sequence[JobResource], job_id: str, request: RunRequest) -> Grant:
    """Acquire each of ``resources`` in order; if one fails, release those already acquired, then raise."""
    grant = Grant()
    taken: list[JobResource] = []
    try:
        for resource in resources:
            taken.append(resource)   # before acquire: a half-done acquire is released too
            grant = grant.merged(resource.acquire(job_id, request))
    except BaseException:
        release_all(taken, job_id)
        raise
    return grant


def release_all(resources: Sequence[JobResource], job_id: str, *, discard: bool = False) -> None:
    """Release (or discard) ``job_id``'s share of every resource, last acquired first; never raises."""
    for resource in reversed(resources):
        try:
            if discard:
                resource.discard(job_id)
            else:
                resource.release(job_id)
        except Exception:   # the contract says never; one broken adapter must not keep the others' share
            log.exception("releasing %s of job %s failed", type(resource).__name__, job_id)
