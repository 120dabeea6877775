"""A daemon's side of the pool: membership under a lease, running its assignments, fencing.

Contract:
- **Membership.** The node's record (capacity, labels, images, capsules) lives at ``nodes/<name>``
  under a lease it renews every ttl/3. If the lease expires, etcd deletes the record and every
  ``assign/<name>/*`` key with it; the scheduler then marks the node's jobs LOST.
- **Assignments.** A watch on ``assign/<name>/`` delivers each bound job; it runs through the
  ordinary ``JobService.run`` (same isolation, limits and logs as ``capsa run``) and its state is
  mirrored into ``jobs/<id>`` with compare-and-swap writes that also check the record still names
  this node and attempt, so a node that lost a job can never overwrite its new owner.
- **Fencing.** A node that has not renewed its lease for ``ttl - margin`` seconds (its own clock,
  measured from when it *sent* the last successful renewal) kills every pool job it runs: by then
  etcd may be about to expire the lease and the scheduler to place the jobs elsewhere. The margin
  covers the kill itself. It re-registers under a fresh lease when etcd answers again; its old
  assignments are gone with the old lease, so nothing runs twice. The same deadline goes to the
  supervisor (``FenceRequest``) after every renewal and at each start, so the jobs also die on time
  when this daemon is dead or hung (the supervisor outlives it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from capsa.cluster.etcd import Compare, EtcdClient, KeyValue, Op
from capsa.cluster.model import SCHEMA_VERSION, Assignment, NodeRecord, PoolJob, PoolJobState, keys, requeue
from capsa.cluster.sealing import open_sealed
from capsa.cluster.spec import POOL_JOB_LABEL, run_request
from capsa.errors import CapsaError, FailedPrecondition
from capsa.jobs.service import JobService
from capsa.runtime.protocol import FenceRequest, OkReply

__all__ = ["Inventory", "PoolNode", "memory_mb"]

log = logging.getLogger("capsa.cluster.node")

_MIRROR_S = 0.2


@dataclass(frozen=True)
class Inventory:
    cpus: int
    memory_mb: int
    gpus: int
    images: list[str]
    capsules: list[str]


def memory_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


class PoolNode:
    """Started after the job service, stopped before it (daemon composition root)."""

    def __init__(self, etcd: EtcdClient, jobs: JobService, *, name: str, address: str, labels: dict[str, str],
                 snapshotter: str, lease_ttl_s: int, max_jobs: int, inventory: Callable[[], Inventory],
                 cert_pem: str = "", key_pem: str = "") -> None:
        self.etcd = etcd
        self.jobs = jobs
        self.name = name
        self.address = address
        self.labels = labels
        self.snapshotter = snapshotter
        self.ttl = lease_ttl_s
        self.max_jobs = max_jobs
        self.inventory = inventory
        self.cert_pem = cert_pem   # the node certificate, published: --secret-env values are sealed to it
        self._key_pem = key_pem
        self.lease = 0
        self.fenced = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[str, tuple[str, int]] = {}   # pool job id -> (local id, attempt)
        self._last_record = b""
        self._threads: list[threading.Thread] = []
        self._watch_stop = threading.Event()
        self._last_ok = time.monotonic()   # when the last successful renewal (or the grant) was sent
        self._fence_warned = False

    # -- life ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Join the pool; if etcd cannot be reached the daemon still starts and joins when it can."""
        self._end_leftovers()
        try:
            self._register()
        except CapsaError as exc:
            log.error("cannot join the pool yet: %s (retrying)", exc)
            self.fenced.set()   # not a member: take no assignments until registered
        for target, label in ((self._keepalive_loop, "keepalive"), (self._watchdog_loop, "watchdog"),
                              (self._mirror_loop, "mirror")):
            t = threading.Thread(target=target, name=f"cluster-{label}", daemon=True)
            t.start()
            self._threads.append(t)
        self._start_watch()

    def _end_leftovers(self) -> None:
        """Kill the pool jobs a previous run of this daemon left running (its supervisor outlived it), before
        joining: their attempts went with the old lease (the scheduler marks them LOST and may place them
        again) and the new lease must not carry them. A pool job is recognised by its local job's label."""
        for job in self.jobs.list(all=False):
            if POOL_JOB_LABEL in (job.labels or {}):
                log.warning("ending pool job %s left running by a previous daemon (local job %s)",
                            job.labels[POOL_JOB_LABEL][:12], job.id[:12])
                with contextlib.suppress(CapsaError):
                    self.jobs.supervisor.stop(job.id, 0)

    def stop(self) -> None:
        """Leave the pool: end the pool jobs here, then revoke the lease (the scheduler marks them LOST at
        once and places restart-policy jobs elsewhere). Ending them first means they never overlap with
        their next attempt, even with --live-restore."""
        self._stop.set()
        self._watch_stop.set()
        for t in self._threads:
            t.join(5)
        if not self.fenced.is_set():
            self._fence("leaving the pool")
        with contextlib.suppress(CapsaError):
            self.etcd.revoke(self.lease)

    # -- membership -------------------------------------------------------------------------------
    def _record(self) -> NodeRecord:
        inv = self.inventory()
        return NodeRecord(name=self.name, address=self.address, lease=self.lease, cpus=inv.cpus,
                          memory_mb=inv.memory_mb, gpus=inv.gpus, labels=self.labels, snapshotter=self.snapshotter,
                          images=sorted(inv.images), capsules=sorted(inv.capsules),
                          max_jobs=self.max_jobs or 4 * max(1, inv.cpus), cert_pem=self.cert_pem)

    def _register(self) -> None:
        sent = time.monotonic()
        self.etcd.txn([Compare.missing(keys.META_VERSION)], [Op.put(keys.META_VERSION, str(SCHEMA_VERSION))])
        self.lease = self.etcd.grant(self.ttl)
        self._last_ok = sent
        record = self._record()
        # The live record under the lease, and the member record without one (what `node ls` shows LOST).
        self.etcd.txn([], [Op.put(keys.node(self.name), record.dump(), lease=self.lease),
                           Op.put(keys.member(self.name), record.dump())])
        self._last_record = dataclasses.replace(record, registered_ns=0).dump()
        self.fenced.clear()
        log.info("joined the pool as %s (lease %x, ttl %ss)", self.name, self.lease, self.ttl)

    def _keepalive_loop(self) -> None:
        refresh_at = time.monotonic() + 10
        while not self._stop.wait(self.ttl / 3):
            sent = time.monotonic()
            try:
                if self.fenced.is_set():
                    self._register()
                    self._last_ok = sent
                    self._restart_watch()
                    continue
                if self.etcd.keepalive(self.lease, timeout=self.ttl / 3) > 0:
                    self._last_ok = sent
                    self._arm_supervisor()
                else:   # etcd already expired it: we were cut off longer than the TTL
                    self._fence("the lease expired")
                    continue
                if sent >= refresh_at:   # images and capsules change: refresh the record now and then
                    refresh_at = sent + 10
                    self._refresh_record()
            except CapsaError as exc:
                log.warning("cannot renew the cluster lease: %s", exc)
            except Exception:   # a bug in an inventory source must not stop the renewals (and fence us)
                log.exception("cluster keepalive")

    def fence_deadline(self) -> float:
        """When this node's pool jobs must be dead (monotonic): before etcd can expire the lease."""
        return self._last_ok + self.ttl - min(1.0, self.ttl / 4)

    def _arm_supervisor(self, local_ids: list[str] | None = None) -> None:
        """Hand the supervisor the lease deadline of the pool jobs: if this daemon dies (or hangs), the
        supervisor, which outlives it, kills them by then; every renewal pushes the deadline on."""
        if local_ids is None:
            with self._lock:
                local_ids = [local for local, _attempt in self._running.values() if local]
        if not local_ids:
            return
        try:   # bounded: this runs between renewals
            self.jobs.supervisor.request(FenceRequest(tuple(local_ids), self.fence_deadline()), OkReply,
                                         timeout=max(0.5, self.ttl / 3))
            self._fence_warned = False
        except CapsaError as exc:   # (an older supervisor, say) the daemon-side watchdog still fences
            if not self._fence_warned:
                log.warning("cannot hand the supervisor the fencing deadline: %s", exc)
            self._fence_warned = True

    def _watchdog_loop(self) -> None:
        """Fence at ``last renewal sent + ttl - margin``, however long a renewal call blocks.

        Separate from the renewing thread on purpose: a call to an unreachable etcd can block for
        seconds (connect timeouts per endpoint), longer than the margin.
        """
        while not self._stop.wait(0.05):
            if not self.fenced.is_set() and time.monotonic() > self.fence_deadline():
                self._fence(f"no lease renewal for {time.monotonic() - self._last_ok:.1f}s")

    def _refresh_record(self) -> None:
        record = self._record()
        dumped = dataclasses.replace(record, registered_ns=0).dump()
        if dumped != self._last_record:
            self.etcd.put(keys.node(self.name), record.dump(), lease=self.lease)
            self._last_record = dumped

    def _fence(self, why: str) -> None:
        """Stop every pool job here: the pool may already have given them to another node."""
        log.warning("fenced (%s): stopping %d pool jobs", why, len(self._running))
        self.fenced.set()
        self._watch_stop.set()
        with self._lock:
            running = dict(self._running)
            self._running.clear()
        for local_id, _attempt in running.values():
            with contextlib.suppress(CapsaError):
                self.jobs.supervisor.stop(local_id, 0)   # SIGKILL at once: the grace would outlive the lease

    # -- assignments -----------------------------------------------------------------------------
    def _start_watch(self) -> None:
        self._watch_stop = threading.Event()
        t = threading.Thread(target=self._watch_loop, args=(self._watch_stop, self.lease), name="cluster-assign",
                             daemon=True)
        t.start()
        self._threads.append(t)

    def _restart_watch(self) -> None:
        self._watch_stop.set()
        self._start_watch()

    def _watch_loop(self, stop: threading.Event, lease: int) -> None:
        prefix = keys.assign(self.name)
        while not stop.is_set():
            try:
                existing, revision = self.etcd.range(prefix)
                for kv in existing:
                    self._take(Assignment.load(kv.value), lease, kv)
                for events in self.etcd.watch(prefix, start_revision=revision + 1, stop=stop):
                    for event in events:
                        # Every PUT, not only creations: a later attempt bound here can overwrite a key
                        # an earlier one left (under a lease still alive); _take dedups by attempt.
                        if event.type == "PUT":
                            self._take(Assignment.load(event.kv.value), lease, event.kv)
            except CapsaError as exc:
                log.warning("assignment watch: %s (re-reading)", exc)
                stop.wait(0.5)

    def _take(self, a: Assignment, lease: int, kv: KeyValue) -> None:
        """Start an attempt once: the same attempt seen again (a re-read after a broken watch, a repeated
        event) is skipped; an assignment under another lease is a previous life's (a daemon restarted
        within the TTL): that attempt is given up with its lease (LOST), never started again."""
        with self._lock:
            if self._running.get(a.job_id, ("", 0))[1] >= a.attempt:
                return
            if self.fenced.is_set() or lease != self.lease or kv.lease != lease:
                return
            self._running[a.job_id] = ("", a.attempt)
        threading.Thread(target=self._start_job, args=(a, kv.mod_revision), name="cluster-start",
                         daemon=True).start()

    def _start_job(self, a: Assignment, assign_rev: int) -> None:
        try:
            kv = self.etcd.get(keys.job(a.job_id))
        except CapsaError as exc:   # the watch breaks too and re-reads the assignment: taken again then
            log.warning("pool job %s: cannot read its record: %s", a.job_id[:12], exc)
            self._drop(a.job_id, a.attempt)
            return
        job = PoolJob.load(kv.value) if kv else None
        if (job is None or job.node != self.name or job.node_lease != self.lease or job.attempt != a.attempt
                or job.status != PoolJobState.ASSIGNED):
            # Not (or no longer) ours to start: another node's, a previous lease's, ended, or started already.
            self._drop(a.job_id, a.attempt)
            with contextlib.suppress(CapsaError):   # only this very assignment: never a later attempt's
                key = keys.assign(self.name, a.job_id)
                self.etcd.txn([Compare(key, "MOD", "EQUAL", assign_rev)], [Op.delete(key)])
            return
        try:
            secret_env = {}
            if job.sealed:   # opened here, handed to the start, never stored
                if self.name not in job.sealed:
                    raise FailedPrecondition(f"its secret environment is not sealed to node {self.name}")
                secret_env = open_sealed(job.sealed[self.name], job_id=job.id, node=self.name, key_pem=self._key_pem)
            local = self.jobs.run(run_request(job.spec, name=job.spec.get("name") or f"pool-{job.id[:12]}",
                                              pool_job_id=job.id, secret_env=secret_env))
        except CapsaError as exc:
            self._finish(a.job_id, a.attempt, PoolJobState.FAILED, f"start failed on {self.name}: {exc}", 127)
            return
        with self._lock:
            kept = self._running.get(a.job_id, ("", 0))[1] == a.attempt
            if kept:
                self._running[a.job_id] = (local.id, a.attempt)
        if not kept:   # fenced while it was starting: it must not run on
            with contextlib.suppress(CapsaError):
                self.jobs.supervisor.stop(local.id, 0)
            return
        self._arm_supervisor([local.id])
        try:
            self._update(a.job_id, a.attempt, lambda j: dataclasses.replace(
                j, state=PoolJobState.RUNNING.value, local_id=local.id, started_ns=local.started_ns or time.time_ns()))
        except CapsaError as exc:   # the mirror still records its end, naming the local job
            log.warning("pool job %s: cannot record RUNNING: %s", a.job_id[:12], exc)

    def _mirror_loop(self) -> None:
        """Mirror the end of each running pool job (one query per pass, not one thread per job)."""
        while not self._stop.wait(_MIRROR_S):
            with self._lock:
                running = {pid: v for pid, v in self._running.items() if v[0]}
            if not running:
                continue
            try:
                active = {j.id for j in self.jobs.list(all=False)}
                for pool_id, (local_id, attempt) in running.items():
                    if local_id in active:
                        continue
                    local = self.jobs.get(local_id)
                    if not local.state.ended:
                        continue
                    state = {"COMPLETED": PoolJobState.COMPLETED, "STOPPED": PoolJobState.STOPPED}.get(
                        local.state.value, PoolJobState.FAILED)
                    self._finish(pool_id, attempt, state, local.reason or "", local.exit_code, local_id=local_id,
                                 started_ns=local.started_ns or 0)
            except CapsaError as exc:
                log.warning("mirroring pool jobs: %s", exc)

    def _finish(self, job_id: str, attempt: int, state: PoolJobState, reason: str, exit_code: int | None, *,
                local_id: str = "", started_ns: int = 0) -> None:
        """Record how an attempt ended; a restart policy puts the job back in ``pending/`` in the same txn.

        The record also names the local job that ran: a job that ends within milliseconds can be seen
        ended by the mirror before its start's RUNNING write (which then finds the record ended and
        gives up), and without this the pool would not know which local job ran it.
        """
        def ended(j: PoolJob) -> PoolJob:
            j = dataclasses.replace(j, exit_code=exit_code, local_id=j.local_id or local_id,
                                    started_ns=j.started_ns or started_ns)
            return requeue(j, state, reason, time.time_ns())

        # The assignment goes in the same transaction: deleted after it, it could take with it the key of
        # the next attempt, bound to this node again in between (which would then never start).
        self._update(job_id, attempt, ended,
                     extra=lambda j: [Op.delete(keys.assign(self.name, job_id)),
                                      *([Op.put(keys.pending(job_id), j.placement())]
                                        if j.status == PoolJobState.PENDING else [])])
        self._drop(job_id, attempt)

    def _drop(self, job_id: str, attempt: int) -> None:
        with self._lock:
            if self._running.get(job_id, ("", 0))[1] == attempt:
                del self._running[job_id]

    def _update(self, job_id: str, attempt: int, change: Callable[[PoolJob], PoolJob],
                extra: Callable[[PoolJob], list[Op]] | None = None) -> bool:
        """Compare-and-swap ``jobs/<id>`` while it still names this node and attempt; False if it does not."""
        for _ in range(20):
            kv = self.etcd.get(keys.job(job_id))
            if kv is None:
                return False
            job = PoolJob.load(kv.value)
            if job.node != self.name or job.attempt != attempt or job.status.ended:
                # Given to someone else (we were LOST) or ended: what runs here must not go on.
                with self._lock:
                    local = self._running.get(job_id, ("", 0))[0]
                if local:
                    with contextlib.suppress(CapsaError):
                        self.jobs.supervisor.stop(local, 0)
                return False
            new = change(job)
            ops = [Op.put(kv.key, new.dump()), *(extra(new) if extra else [])]
            if self.etcd.txn([Compare.unchanged(kv)], ops):
                return True
        return False

    # -- node-to-node -----------------------------------------------------------------------------
    def stop_local(self, local_id: str, grace_s: float) -> str:
        with contextlib.suppress(CapsaError):
            pool_id = next((p for p, (loc, _) in self._running.items() if loc == local_id), "")
            if pool_id:
                self._update(pool_id, self._running[pool_id][1],
                             lambda j: dataclasses.replace(j, stop_requested=True))
        return self.jobs.stop(local_id, grace_s or None).state.value

