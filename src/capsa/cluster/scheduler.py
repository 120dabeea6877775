"""``capsa scheduler``: one leader (etcd's election API) places pool jobs; stand-bys wait their turn.

A pass of the leader: read nodes, pending jobs and current assignments; for each pending job (oldest
first) filter and score the nodes (:mod:`capsa.cluster.placement`) and bind it with one transaction
that (a) checks the pending key still exists, the job record is unchanged, the node is still
registered and *this scheduler is still the leader*, then (b) deletes the pending key, writes the
assignment under the node's lease and records the node in the job. A job is therefore bound at most
once, even by two schedulers that both believe they lead.

Then lost nodes: a job ASSIGNED or RUNNING whose node is gone (or came back under another lease) is
LOST, and placed again when its restart policy says so. Then pool workflows advance. Once a minute,
the records of jobs and workflows that ended longer ago than the retention are removed
(:mod:`capsa.cluster.retention`).
Passes run when etcd reports a change under the prefix, and at least every second.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field

from capsa.cluster.etcd import Compare, EtcdClient, KeyValue, Op
from capsa.cluster.model import (
    ACTIVE,
    ELECTION,
    PREFIX,
    Assignment,
    NodeRecord,
    PoolJob,
    PoolJobState,
    keys,
    requeue,
)
from capsa.cluster.placement import NodeLoad, Strategy, choose, demand_of, explain
from capsa.cluster.retention import prune_records
from capsa.cluster.workflows import advance_workflows
from capsa.errors import CapsaError

__all__ = ["RETENTION_S", "PassStats", "Scheduler"]

log = logging.getLogger("capsa.cluster.scheduler")

RETENTION_S = 7 * 86400.0   # ended pool jobs and workflows are forgotten this long after they ended
_SWEEP_S = 60.0             # how often the leader sweeps for them


@dataclass
class PassStats:
    placed: int = 0
    unplaceable: dict[str, str] = field(default_factory=dict)
    lost: int = 0
    pruned: int = 0


class Scheduler:
    def __init__(self, etcd: EtcdClient, *, name: str, strategy: Strategy = Strategy.SPREAD,
                 lease_ttl_s: int = 3, retention_s: float = RETENTION_S) -> None:
        self.etcd = etcd
        self.name = name
        self.strategy = strategy
        self.ttl = lease_ttl_s
        self.lease = 0
        self.leader_key = ""
        self.leading = threading.Event()
        self.stop_event = threading.Event()
        self._wake = threading.Event()
        self._known_leases: dict[str, int] = {}
        self._full_scan_at = 0.0
        self.placed_total = 0
        self.retention_s = retention_s
        self._sweep_at = 0.0

    # -- election ------------------------------------------------------------------------------
    def run(self) -> None:
        """Campaign, lead until the lease is lost or stop is set, campaign again."""
        while not self.stop_event.is_set():
            try:
                self.lease = self.etcd.grant(self.ttl)
            except CapsaError as exc:
                log.warning("cannot reach etcd: %s", exc)
                self.stop_event.wait(1)
                continue
            keeper = threading.Thread(target=self._keepalive, args=(self.lease,), daemon=True, name="sched-lease")
            keeper.start()
            try:
                leader = None
                while leader is None and not self.stop_event.is_set() and keeper.is_alive():
                    leader = self.etcd.campaign(ELECTION, self.lease, self.name, timeout=self.ttl * 2)
                if leader is None:
                    continue
                self.leader_key = _decode(leader["key"])
                if not self._still_leader():   # belt and braces: a win with a key already gone is no win
                    log.warning("%s: campaign won with a key that no longer exists; campaigning again", self.name)
                    continue
                log.info("%s leads the pool scheduler", self.name)
                self.leading.set()
                self._lead(keeper)
            except CapsaError as exc:
                log.warning("scheduler: %s", exc)
            finally:
                self.leading.clear()
                with contextlib.suppress(CapsaError):
                    self.etcd.revoke(self.lease)
        log.info("%s stopped", self.name)

    def _keepalive(self, lease: int) -> None:
        last_ok = time.monotonic()
        while not self.stop_event.wait(self.ttl / 3):
            sent = time.monotonic()
            try:
                if self.etcd.keepalive(lease) <= 0:
                    return
                last_ok = sent
            except CapsaError:
                pass
            if time.monotonic() - last_ok > self.ttl - 0.5:
                return   # leadership may be gone: stop leading before a successor starts

    def _lead(self, keeper: threading.Thread) -> None:
        watcher = threading.Thread(target=self._watch_changes, daemon=True, name="sched-watch")
        watch_stop = threading.Event()
        self._watch_stop = watch_stop
        watcher.start()
        self._full_scan_at = 0.0
        try:
            while not self.stop_event.is_set() and keeper.is_alive():
                self._wake.clear()
                if not self._still_leader():   # every bind would fail its guard: step down, campaign again
                    log.warning("%s: the leader key is gone; standing down", self.name)
                    return
                self.one_pass()
                self._wake.wait(1.0)
        finally:
            watch_stop.set()

    def _watch_changes(self) -> None:
        try:
            _, revision = self.etcd.range(keys.META_VERSION)
            for _events in self.etcd.watch(PREFIX, start_revision=revision + 1, stop=self._watch_stop):
                self._wake.set()
        except CapsaError as exc:
            log.warning("scheduler watch: %s", exc)

    # -- one pass -----------------------------------------------------------------------------------
    def one_pass(self) -> PassStats:
        stats = PassStats()
        nodes = {n.name: n for n in (NodeRecord.load(kv.value) for kv in self.etcd.range(keys.NODES)[0])}
        loads = {name: NodeLoad(node) for name, node in nodes.items()}
        for kv in self.etcd.range(keys.ASSIGN)[0]:
            node_name = kv.key[len(keys.ASSIGN):].split("/", 1)[0]
            if node_name in loads:
                loads[node_name].add(Assignment.load(kv.value))
        pending = sorted(self.etcd.range(keys.PENDING)[0], key=lambda kv: kv.create_revision)
        for kv in pending:
            reason = self._place(kv, list(loads.values()))
            if reason is None:
                stats.placed += 1
            else:
                stats.unplaceable[kv.key.rsplit("/", 1)[-1]] = reason
        stats.lost = self._mark_lost(nodes)
        advance_workflows(self.etcd, self._leader_guard())
        self.placed_total += stats.placed
        if self.retention_s > 0 and time.monotonic() >= self._sweep_at:
            self._sweep_at = time.monotonic() + _SWEEP_S
            pruned = prune_records(self.etcd, cutoff_ns=time.time_ns() - int(self.retention_s * 1e9),
                                   guard=self._leader_guard())
            stats.pruned = len(pruned.job_ids) + len(pruned.workflow_ids)
        return stats

    def _still_leader(self) -> bool:
        kv = self.etcd.get(self.leader_key)
        return kv is not None and kv.lease == self.lease

    def _leader_guard(self) -> list[Compare]:
        return [Compare.exists(self.leader_key)] if self.leader_key else []

    def _place(self, pending: KeyValue, loads: list[NodeLoad]) -> str | None:
        request = pending.json()
        job_id = request["id"]
        if int(request.get("not_before_ns") or 0) > time.time_ns():   # --schedule: passes run every second
            return "scheduled for later"
        demand = demand_of(request["spec"], request.get("constraints") or {}, request.get("sealed_for") or ())
        target = choose(loads, demand, self.strategy)
        if target is None:
            reasons = sorted({f"{load.node.name}: {explain(load, demand)}" for load in loads})
            return "; ".join(reasons) or "no nodes in the pool"
        job_kv = self.etcd.get(keys.job(job_id))
        if job_kv is None:
            self.etcd.delete(pending.key)
            return "job record missing"
        job = PoolJob.load(job_kv.value)
        node = target.node
        bound = PoolJob(**{**job.__dict__, "state": PoolJobState.ASSIGNED.value, "node": node.name,
                           "node_lease": node.lease, "placed_ns": time.time_ns(), "reason": ""})
        assignment = Assignment(job_id=job_id, attempt=job.attempt, cpu=demand.cpu, memory_mb=demand.memory_mb,
                                gpus=demand.gpus)
        ok = self.etcd.txn(
            [Compare.exists(pending.key), Compare.unchanged(job_kv), Compare(keys.node(node.name), "LEASE", "EQUAL",
                                                                            node.lease), *self._leader_guard()],
            [Op.delete(pending.key), Op.put(keys.job(job_id), bound.dump()),
             Op.put(keys.assign(node.name, job_id), assignment.dump(), lease=node.lease)])
        if not ok:
            return "lost a race (re-read next pass)"
        target.add(assignment)
        return None

    def _mark_lost(self, nodes: dict[str, NodeRecord]) -> int:
        """LOST for active jobs whose node's lease is gone; scans all jobs only when a lease vanished."""
        leases = {name: n.lease for name, n in nodes.items()}
        vanished = {name for name, lease in self._known_leases.items() if leases.get(name) != lease}
        self._known_leases = leases
        now = time.monotonic()
        if not vanished and now < self._full_scan_at:
            return 0
        self._full_scan_at = now + 10.0
        lost = 0
        for kv in self.etcd.range(keys.JOBS)[0]:
            job = PoolJob.load(kv.value)
            if job.status not in ACTIVE or leases.get(job.node) == job.node_lease:
                continue
            reason = f"node {job.node} lost (its lease expired)"
            after = requeue(job, PoolJobState.LOST, reason, time.time_ns())
            ops = [Op.put(kv.key, after.dump())]
            if after.status == PoolJobState.PENDING:
                ops.append(Op.put(keys.pending(job.id), after.placement()))
            if self.etcd.txn([Compare.unchanged(kv), *self._leader_guard()], ops):
                lost += 1
                log.warning("job %s: %s%s", job.id[:12], reason,
                            "; placing it again" if after.status == PoolJobState.PENDING else "")
        return lost


def _decode(b64: str) -> str:
    import base64

    return base64.b64decode(b64).decode()
