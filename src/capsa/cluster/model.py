"""What the cluster stores in etcd: the key layout and one dataclass per record, as versioned JSON.

Key layout (every key under one prefix; ``v1`` is the layout's version, bumped with a migration when
a record changes incompatibly):

    /capsa/v1/meta/version          "1", written once by whoever starts first
    /capsa/v1/nodes/<node>          NodeRecord, under the node's lease (gone when the lease expires)
    /capsa/v1/members/<node>        the last NodeRecord, without a lease: a member whose record is gone is LOST
    /capsa/v1/jobs/<job id>         PoolJob, the job's whole story (spec, state, owner, attempts)
    /capsa/v1/pending/<job id>      a placement request (the job's spec); deleted by the binding txn
    /capsa/v1/assign/<node>/<job>   Assignment, under the node's lease; the node runs what is here
    /capsa/v1/workflows/<wf id>     PoolWorkflow, advanced by the scheduler leader
    /capsa/v1/election/scheduler    etcd's election keys (one per candidate)
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from capsa.errors import InvalidArgument

__all__ = [
    "ACTIVE", "ELECTION", "PREFIX", "SCHEMA_VERSION", "Assignment", "NodeRecord", "NodeState", "PoolJob",
    "PoolJobState", "PoolWorkflow", "Restart", "after_attempt", "keys", "parse_constraints", "requeue",
]

SCHEMA_VERSION = 1
PREFIX = f"/capsa/v{SCHEMA_VERSION}/"
ELECTION = PREFIX + "election/scheduler"
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$")


class keys:  # noqa: N801 - a namespace of key builders, read as keys.job(id)
    META_VERSION = PREFIX + "meta/version"
    NODES = PREFIX + "nodes/"
    MEMBERS = PREFIX + "members/"
    JOBS = PREFIX + "jobs/"
    PENDING = PREFIX + "pending/"
    ASSIGN = PREFIX + "assign/"
    WORKFLOWS = PREFIX + "workflows/"

    @staticmethod
    def node(name: str) -> str:
        return keys.NODES + name

    @staticmethod
    def member(name: str) -> str:
        return keys.MEMBERS + name

    @staticmethod
    def job(job_id: str) -> str:
        return keys.JOBS + job_id

    @staticmethod
    def pending(job_id: str) -> str:
        return keys.PENDING + job_id

    @staticmethod
    def assign(node: str, job_id: str = "") -> str:
        return f"{keys.ASSIGN}{node}/{job_id}"

    @staticmethod
    def workflow(wf_id: str) -> str:
        return keys.WORKFLOWS + wf_id


class NodeState(StrEnum):
    READY = "READY"
    LOST = "LOST"        # its lease expired (shown by `node ls` from the jobs that still name it)


class PoolJobState(StrEnum):
    PENDING = "PENDING"      # waiting for a placement
    ASSIGNED = "ASSIGNED"    # bound to a node, not started there yet
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    LOST = "LOST"            # its node's lease expired while it was assigned or running

    @property
    def ended(self) -> bool:
        return self in (PoolJobState.COMPLETED, PoolJobState.FAILED, PoolJobState.STOPPED, PoolJobState.LOST)


ACTIVE = (PoolJobState.ASSIGNED, PoolJobState.RUNNING)


class Restart(StrEnum):
    NO = "no"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"


def _record(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})   # newer fields from newer nodes are ignored


@dataclass
class NodeRecord:
    name: str
    address: str                       # host:port of its capsa API (mTLS)
    lease: int
    cpus: int
    memory_mb: int
    gpus: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    snapshotter: str = "overlay"
    images: list[str] = field(default_factory=list)
    capsules: list[str] = field(default_factory=list)     # NAME@VERSION
    max_jobs: int = 0                  # concurrent pool jobs it accepts
    cert_pem: str = ""                 # its `node` certificate: what --secret-env values are sealed to
    registered_ns: int = field(default_factory=time.time_ns)
    v: int = SCHEMA_VERSION

    def dump(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def load(cls, raw: bytes) -> NodeRecord:
        return _record(cls, json.loads(raw))


@dataclass
class PoolJob:
    id: str
    spec: dict[str, Any]               # RunRequest fields (capsa.cluster.spec), no secrets
    constraints: dict[str, str] = field(default_factory=dict)
    restart: str = Restart.NO.value
    max_restarts: int = 3
    state: str = PoolJobState.PENDING.value
    node: str = ""
    node_lease: int = 0                # the lease of ``node`` it was bound under (fencing, LOST detection)
    attempt: int = 1
    local_id: str = ""                 # the job's id on its node
    exit_code: int | None = None
    reason: str = ""
    history: list[str] = field(default_factory=list)   # one line per earlier attempt
    workflow_id: str = ""
    workflow_job: str = ""
    submitted_ns: int = field(default_factory=time.time_ns)
    placed_ns: int = 0
    started_ns: int = 0
    ended_ns: int = 0
    stop_requested: bool = False
    not_before_ns: int = 0             # --schedule: not placed before this wall-clock time
    sealed: dict[str, str] = field(default_factory=dict)   # node -> its box of --secret-env (capsa.cluster.sealing)
    v: int = SCHEMA_VERSION

    @property
    def status(self) -> PoolJobState:
        return PoolJobState(self.state)

    def dump(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def load(cls, raw: bytes) -> PoolJob:
        return _record(cls, json.loads(raw))

    def placement(self) -> dict[str, Any]:
        """What the scheduler needs to place it (the pending key's value)."""
        return {"id": self.id, "spec": self.spec, "constraints": self.constraints, "attempt": self.attempt,
                "submitted_ns": self.submitted_ns, "not_before_ns": self.not_before_ns,
                "sealed_for": sorted(self.sealed), "v": SCHEMA_VERSION}


@dataclass
class Assignment:
    job_id: str
    attempt: int
    cpu: float                         # cores reserved (max_cpu / 100)
    memory_mb: int
    gpus: int
    v: int = SCHEMA_VERSION

    def dump(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def load(cls, raw: bytes) -> Assignment:
        return _record(cls, json.loads(raw))


@dataclass
class PoolWorkflow:
    id: str
    name: str
    yaml: str
    base_dir: str = ""
    jobs: dict[str, str] = field(default_factory=dict)       # workflow job name -> pool job id
    skipped: dict[str, str] = field(default_factory=dict)    # name -> why
    constraints: dict[str, str] = field(default_factory=dict)  # for every job of the workflow
    state: str = "RUNNING"                                   # RUNNING | COMPLETED | FAILED
    submitted_ns: int = field(default_factory=time.time_ns)
    ended_ns: int = 0
    v: int = SCHEMA_VERSION

    def dump(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def load(cls, raw: bytes) -> PoolWorkflow:
        return _record(cls, json.loads(raw))


def after_attempt(job: PoolJob, outcome: PoolJobState, reason: str) -> Literal["rerun", "final"]:
    """Whether an attempt that ended with ``outcome`` is placed again, by the job's restart policy.

    A stop the user asked for is final under every policy; a rerun also needs attempts left.
    """
    if job.stop_requested or outcome == PoolJobState.STOPPED or job.attempt > job.max_restarts:
        return "final"
    if job.restart == Restart.ALWAYS.value:
        return "rerun"
    if job.restart == Restart.ON_FAILURE.value and outcome in (PoolJobState.FAILED, PoolJobState.LOST):
        return "rerun"
    return "final"


def requeue(job: PoolJob, outcome: PoolJobState, reason: str, now_ns: int) -> PoolJob:
    """The record after one attempt ended: placed again (PENDING, attempt+1) or ended for good."""
    line = f"attempt {job.attempt} on {job.node or '-'}: {outcome.value}" + (f" ({reason})" if reason else "")
    if after_attempt(job, outcome, reason) == "rerun":
        return dataclasses.replace(job, state=PoolJobState.PENDING.value, attempt=job.attempt + 1, node="",
                                   node_lease=0, local_id="", exit_code=None, reason=f"restarting: {line}",
                                   history=[*job.history, line], placed_ns=0, started_ns=0, ended_ns=0)
    return dataclasses.replace(job, state=outcome.value, reason=reason, ended_ns=now_ns)


def parse_constraints(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``label=value`` constraints (all must match a node's labels)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _LABEL.match(key):
            raise InvalidArgument(f"--constraint {pair!r}: expected LABEL=VALUE")
        out[key] = value
    return out

