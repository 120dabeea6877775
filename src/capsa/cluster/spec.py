"""A pool job's spec: the RunJob request as plain JSON for etcd, and back to a ``RunRequest``.

Not in the spec: ``--secret-env`` values, which are sealed to the nodes instead
(:mod:`capsa.cluster.sealing`). Refused, each with the reason in the error: ``--upload`` (the staged
files live on the serving node, not on the one the job lands on), ``--rm`` (the pool record names the local job: it must outlive the job) and ``-p`` (refused by the CLI:
a port is published on the node that runs the job, which is not known yet). ``--schedule`` is the
scheduler's business: :func:`not_before_ns` turns it into the earliest placement time.
"""

from __future__ import annotations

from typing import Any

from capsa.errors import InvalidArgument
from capsa.jobs.model import Resources, RunRequest

__all__ = ["POOL_JOB_LABEL", "REFUSED", "not_before_ns", "run_request", "spec_from_pb"]

# On the local job a node runs for a pool job: which pool job it is. A restarted daemon ends the local
# jobs carrying it before it rejoins (their attempts were given up with its old lease).
POOL_JOB_LABEL = "capsa.pool/job"

REFUSED = {
    "--upload": "--upload is not supported with --pool: the uploaded files are staged on the node that received"
                " them, not on the node the scheduler picks; put them in an image, a capsule or a volume the"
                " chosen nodes have",
    "--rm": "--rm is not supported with --pool: the pool's record names the job on its node, so that job must"
            " outlive its end; `capsa rm --pool` removes the record",
}


def spec_from_pb(request: Any) -> dict[str, Any]:
    """The spec of a ``capsa.v1.RunJobRequest``."""
    for flag, given in (("--upload", request.upload_session), ("--rm", request.auto_remove)):
        if given:
            raise InvalidArgument(REFUSED[flag])
    if not request.command and not request.image and not request.runtime:
        raise InvalidArgument("a pool job needs a command, an image or a runtime")
    r = request.resources
    return {
        "command": list(request.command), "env": dict(request.env), "workdir": request.workdir,
        "name": request.name, "image": request.image, "pull": request.pull or "missing", "user": request.user,
        "runtime": request.runtime, "seccomp": request.seccomp or "default", "network": request.network or "host",
        "volumes": list(request.volumes), "capsules": list(request.capsules), "gpus": request.gpus,
        "timeout": request.timeout, "labels": dict(request.labels), "log_max_size": request.log_max_size,
        "resources": {"max_cpu": r.max_cpu, "cpu_cores": r.cpu_cores, "max_memory_mb": r.max_memory_mb,
                      "max_iobps": r.max_iobps, "max_pids": r.max_pids},
    }


def run_request(spec: dict[str, Any], *, name: str, pool_job_id: str = "",
                secret_env: dict[str, str] | None = None) -> RunRequest:
    r = spec.get("resources") or {}
    labels = dict(spec.get("labels") or {})
    if pool_job_id:
        labels[POOL_JOB_LABEL] = pool_job_id
    return RunRequest(
        command=tuple(spec.get("command") or ()), env=dict(spec.get("env") or {}), workdir=spec.get("workdir", ""),
        name=name, image=spec.get("image", ""), pull=spec.get("pull", "missing"), user=spec.get("user", ""),
        runtime=spec.get("runtime", ""), seccomp=spec.get("seccomp", "default"), network=spec.get("network", "host"),
        volumes=tuple(spec.get("volumes") or ()), capsules=tuple(spec.get("capsules") or ()),
        gpus=int(spec.get("gpus", 0)), timeout=spec.get("timeout", ""), labels=labels,
        log_max_size=spec.get("log_max_size", ""), secret_env=dict(secret_env or {}),
        resources=Resources(max_cpu=int(r.get("max_cpu", 0)), cpu_cores=r.get("cpu_cores", ""),
                            max_memory_mb=int(r.get("max_memory_mb", 0)), max_iobps=int(r.get("max_iobps", 0)),
                            max_pids=int(r.get("max_pids", 0))),
    )


def not_before_ns(request: Any) -> int:
    """``--schedule`` of a ``capsa.v1.RunJobRequest`` as the wall-clock time before which the scheduler does
    not place the job (0: at once). The submitting node's clock reads it, the scheduler's compares it."""
    if not request.schedule:
        return 0
    from capsa.jobs.schedule import parse_start_time

    return parse_start_time(request.schedule)
