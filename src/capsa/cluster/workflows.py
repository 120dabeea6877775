"""Pool workflows: the DAG of a workflow YAML, each job placed on the pool as its requirements hold.

The scheduler leader advances every RUNNING workflow once per pass: a job whose ``requires`` holds
is created as a pool job (and placed like any other, possibly on another node than its
dependencies); one whose requirements can no longer hold is SKIPPED; the workflow ends when every
job has. Conditions are the workflow package's own (``capsa.workflows.conditions``).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from typing import Any

from capsa.cluster.etcd import Compare, EtcdClient, Op
from capsa.cluster.model import PoolJob, PoolJobState, PoolWorkflow, keys
from capsa.workflows import compile_spec, validate_workflow
from capsa.workflows.schema import JobSpec, WorkflowSpec

__all__ = ["advance_workflows", "new_job_id", "new_workflow", "parse_workflow", "submit_ops"]

# What a pool job's end means to a workflow condition (LOST counts as a failure).
_OUTCOME = {"COMPLETED": "COMPLETED", "FAILED": "FAILED", "STOPPED": "FAILED", "LOST": "FAILED"}


def new_job_id() -> str:
    return secrets.token_hex(16)


def submit_ops(job: PoolJob) -> list[Op]:
    return [Op.put(keys.job(job.id), job.dump()), Op.put(keys.pending(job.id), job.placement())]


def new_workflow(text: str, base_dir: str) -> PoolWorkflow:
    """A validated pool workflow (InvalidArgument listing every problem otherwise)."""
    from pathlib import Path

    validated = validate_workflow(text, base_dir=Path(base_dir) if base_dir else None)
    return PoolWorkflow(id=new_job_id(), name=validated.spec.name, yaml=text, base_dir=base_dir)


def _spec_of(job: JobSpec, name: str) -> dict[str, Any]:
    command = [job.command, *job.args] if job.command else list(job.args)
    r = job.resources
    return {"command": command, "env": dict(job.env), "workdir": job.workdir, "name": name, "image": job.image,
            "pull": "missing", "user": "", "runtime": job.runtime, "seccomp": "default",
            "network": job.network or "host", "volumes": list(job.volumes), "capsules": list(job.capsules),
            "gpus": 0, "timeout": job.timeout or "",
            "resources": {"max_cpu": r.max_cpu, "cpu_cores": r.cpu_cores, "max_memory_mb": r.max_memory,
                          "max_iobps": r.max_iobps, "max_pids": r.max_pids}}


def parse_workflow(wf: PoolWorkflow) -> tuple[WorkflowSpec, Any]:
    import yaml

    spec = WorkflowSpec.model_validate(yaml.safe_load(wf.yaml), strict=False)
    return spec, compile_spec(spec)


def advance_workflows(etcd: EtcdClient, guard: list[Compare]) -> None:
    for kv in etcd.range(keys.WORKFLOWS)[0]:
        wf = PoolWorkflow.load(kv.value)
        if wf.state != "RUNNING":
            continue
        spec, compiled = parse_workflow(wf)
        outcomes: dict[str, str | None] = {}
        for name in compiled.order:
            if name in wf.skipped:
                outcomes[name] = "SKIPPED"
            elif name in wf.jobs:
                job_kv = etcd.get(keys.job(wf.jobs[name]))
                state = PoolJob.load(job_kv.value).state if job_kv else "LOST"
                outcomes[name] = _OUTCOME.get(state) if PoolJobState(state).ended else None
            else:
                outcomes[name] = None
        ops: list[Op] = []
        jobs, skipped = dict(wf.jobs), dict(wf.skipped)
        for name in compiled.order:
            if name in jobs or name in skipped:
                continue
            verdict = compiled.conditions[name].evaluate(outcomes)
            if verdict is False:
                skipped[name] = f"requirement {compiled.conditions[name]} can no longer hold"
                outcomes[name] = "SKIPPED"
            elif verdict is True:
                job = PoolJob(id=new_job_id(), spec=_spec_of(spec.jobs[name], name), constraints=wf.constraints,
                              workflow_id=wf.id, workflow_job=name)
                jobs[name] = job.id
                ops.extend(submit_ops(job))
        state, ended_ns = wf.state, 0
        if all(outcomes.get(n) is not None for n in compiled.order):
            state = "COMPLETED" if all(outcomes[n] == "COMPLETED" for n in compiled.order) else "FAILED"
            ended_ns = time.time_ns()
        if ops or state != wf.state or skipped != wf.skipped:
            new = dataclasses.replace(wf, jobs=jobs, skipped=skipped, state=state, ended_ns=ended_ns)
            etcd.txn([Compare.unchanged(kv), *guard], [Op.put(kv.key, new.dump()), *ops])
