"""A pool job's spec: the RunJob request as plain JSON for etcd, and back to a ``RunRequest``.

Secrets, uploads and schedules are refused: etcd would hold secret values in plain text, an upload
lives on the node that received it, and a schedule is the scheduler's business, not a node's.
"""

from __future__ import annotations

from typing import Any

from capsa.errors import InvalidArgument
from capsa.jobs.model import Resources, RunRequest

__all__ = ["run_request", "spec_from_pb"]


def spec_from_pb(request: Any) -> dict[str, Any]:
    """The spec of a ``capsa.v1.RunJobRequest``."""
    if request.secret_env:
        raise InvalidArgument("--secret-env is not supported for pool jobs (etcd would store the values)")
    if request.upload_session:
        raise InvalidArgument("--upload is not supported for pool jobs (the upload stays on the serving node)")
    if request.schedule:
        raise InvalidArgument("--schedule is not supported for pool jobs")
    if not request.command and not request.image and not request.runtime:
        raise InvalidArgument("a pool job needs a command, an image or a runtime")
    r = request.resources
    return {
        "command": list(request.command), "env": dict(request.env), "workdir": request.workdir,
        "name": request.name, "image": request.image, "pull": request.pull or "missing", "user": request.user,
        "runtime": request.runtime, "seccomp": request.seccomp or "default", "network": request.network or "host",
        "volumes": list(request.volumes), "capsules": list(request.capsules), "gpus": request.gpus,
        "timeout": request.timeout,
        "resources": {"max_cpu": r.max_cpu, "cpu_cores": r.cpu_cores, "max_memory_mb": r.max_memory_mb,
                      "max_iobps": r.max_iobps, "max_pids": r.max_pids},
    }


def run_request(spec: dict[str, Any], *, name: str) -> RunRequest:
    r = spec.get("resources") or {}
    return RunRequest(
        command=tuple(spec.get("command") or ()), env=dict(spec.get("env") or {}), workdir=spec.get("workdir", ""),
        name=name, image=spec.get("image", ""), pull=spec.get("pull", "missing"), user=spec.get("user", ""),
        runtime=spec.get("runtime", ""), seccomp=spec.get("seccomp", "default"), network=spec.get("network", "host"),
        volumes=tuple(spec.get("volumes") or ()), capsules=tuple(spec.get("capsules") or ()),
        gpus=int(spec.get("gpus", 0)), timeout=spec.get("timeout", ""),
        resources=Resources(max_cpu=int(r.get("max_cpu", 0)), cpu_cores=r.get("cpu_cores", ""),
                            max_memory_mb=int(r.get("max_memory_mb", 0)), max_iobps=int(r.get("max_iobps", 0)),
                            max_pids=int(r.get("max_pids", 0))),
    )
