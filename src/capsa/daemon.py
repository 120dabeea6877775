"""The daemon's composition root: builds every component from ``ServerConfig`` and owns start-up,
reconciliation and shutdown order. The gRPC surface lives in ``capsa.api.server``.

:meth:`Daemon.start` reads top to bottom as the order things come up in; each component that
must be closed pushes its closer on one stack as it starts, so :meth:`Daemon.stop` undoes
exactly what was started, in reverse, and a start-up that fails part-way (the listen address
is taken) leaves nothing behind: no supervisor, no zygote, no open database.

Start-up order matters: the supervisor (which forks job processes) is a separate process
started before the gRPC server creates its threads, so this process never forks user code
or changes namespaces (ARCHITECTURE.md, fork safety).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from capsa.capsules import CapsuleStore
from capsa.capsules.distribution import CapsuleDistribution
from capsa.capsules.limits import CapsuleLimits
from capsa.capsules.machines import CapsuleGcPolicy
from capsa.capsules.manager import CapsuleManager
from capsa.capsules.resource import CapsuleResource
from capsa.config import HomeLayout, ServerConfig, ensure_home, load_server_config
from capsa.errors import CapsaError, Unavailable
from capsa.fdpass import FdBroker
from capsa.fsm import Engine, RetryPolicy
from capsa.gpus import GpuAllocator
from capsa.gpus.resource import GpuResource
from capsa.housekeeping import Housekeeper, RetentionPolicy
from capsa.images.resource import ImageRootResource
from capsa.images.service import ImageService
from capsa.images.setup import open_image_service, open_snapshotter_from_config, registry_config, s3_config
from capsa.jobs.resources import JobResource
from capsa.jobs.schedule import Scheduler
from capsa.jobs.secrets import SecretBox
from capsa.jobs.service import JobService
from capsa.jobs.store import JobStore
from capsa.jobs.uploads import UploadLimits
from capsa.metrics import DaemonMetrics, open_metrics
from capsa.metrics.prometheus import PipelineCollector, PipelineStats
from capsa.networks import NetStats, NetworkManager
from capsa.networks.resource import NetworkResource
from capsa.runtime.client import SupervisorClient, ensure_supervisor
from capsa.runtimes import QUEUE as RUNTIME_QUEUE
from capsa.runtimes import RuntimeService
from capsa.snapshots import Snapshotter
from capsa.state import Database
from capsa.state.backup import BackupSchedule
from capsa.volumes import VolumeManager
from capsa.volumes.resource import VolumeResource
from capsa.workflows import QUEUE as WORKFLOW_QUEUE
from capsa.workflows import Registries, WorkflowService

if TYPE_CHECKING:
    from capsa.api.server import ApiServer
    from capsa.cluster import ClusterComponent

__all__ = ["Daemon", "DaemonOptions", "run_daemon"]

log = logging.getLogger("capsa.daemon")


@dataclass(frozen=True)
class DaemonOptions:
    home: Path
    config_path: Path | None = None
    listen: str | None = None
    live_restore: bool = False   # keep jobs running when the daemon stops cleanly
    ready_file: Path | None = None   # written once the API listens and the client config exists


class Daemon:
    """Every component of one daemon. The component attributes exist once :meth:`start` returned."""

    db: Database
    supervisor: SupervisorClient
    cgroup_version: int
    snapshotter: Snapshotter
    engine: Engine
    images: ImageService
    networks: NetworkManager
    volumes: VolumeManager
    gpus: GpuAllocator
    capsule_store: CapsuleStore
    fd_broker: FdBroker   # capsa cp's local fast path: descriptors over run/copy/fds.sock (root only)
    capsules: CapsuleManager
    capsule_distribution: CapsuleDistribution
    jobs: JobService
    scheduler: Scheduler
    metrics: DaemonMetrics
    runtimes: RuntimeService
    workflows: WorkflowService
    housekeeper: Housekeeper
    server: ApiServer
    cluster: ClusterComponent | None   # with a cluster section in server.yaml (capsa.cluster)

    def __init__(self, options: DaemonOptions) -> None:
        self.options = options
        self.config: ServerConfig = _load_config(options)
        self.home = Path(self.config.home)
        self.layout = HomeLayout(self.home)
        self.listen = options.listen or self.config.listen
        self.stopped = threading.Event()
        self.job_resources: tuple[JobResource, ...] = ()   # what jobs borrow from the node, once built
        self._serving = False
        self._running = contextlib.ExitStack()
        self._policies: list[BackupSchedule | CapsuleGcPolicy | RetentionPolicy] = []

    def start(self) -> None:
        """Build, reconcile and serve; on any failure, undo what was started and raise."""
        check_bindable(self.listen)   # before anything starts: a taken port must leave nothing running
        with contextlib.ExitStack() as undo:
            undo.callback(self.stopped.set)
            undo.callback(self._remove_pid_file)
            self._build(undo)
            self._reconcile()
            self._join_pool(undo)
            self._serve(undo)
            self._serving = True
            self._running = undo.pop_all()
        log.info("capsa daemon listening on %s (home %s)", self.listen, self.home)

    def stop(self) -> None:
        """Stop serving, then close every component in the reverse order of start-up."""
        self._running.close()

    # -- start-up, in order ------------------------------------------------------------------------
    def _build(self, undo: contextlib.ExitStack) -> None:
        config, home = self.config, self.home
        self.db = Database(self.layout.db)
        undo.callback(self.db.close, checkpoint=True)
        self.supervisor, started_now = ensure_supervisor(home)
        # Runs after the engine parked its runs (workflows resume later) and before the database closes.
        undo.callback(self._end_jobs, started_now=started_now)
        self.cgroup_version = self.supervisor.ping().cgroup_version
        self.snapshotter = open_snapshotter_from_config(config, self.db, home)
        undo.callback(self.snapshotter.close)
        fsm = config.fsm
        # A workflow run holds its worker for the workflow's whole life: a queue of its own keeps
        # workflows from starving the shared pool, where the image pulls of their jobs run.
        # Runtime builds hold theirs while their build jobs run: a small queue of their own, too.
        self.engine = Engine(self.db, queues={WORKFLOW_QUEUE: 16, RUNTIME_QUEUE: 2, **fsm.queues}, retry=RetryPolicy(
            base_s=fsm.retry_base_s, cap_s=fsm.retry_cap_s, max_attempts=fsm.max_attempts))
        undo.callback(self.engine.shutdown, wait=True, timeout=10)   # after the server and timers stopped
        undo.callback(self._close_policies)                            # before the engine shuts down
        # Counters the image pipeline reports to and Prometheus reads (queues, refusals, durations).
        self.pipeline_stats = PipelineStats()
        self.images = open_image_service(config, self.db, self.engine, home, self.snapshotter,
                                         observer=self.pipeline_stats)
        self.networks = NetworkManager(self.db)
        self.volumes = VolumeManager(self.db, self.layout.volumes)
        # CAPSA_GPU_ROOT: where the driver's /proc and /dev live (default /; tests point it at a fake tree).
        self.gpus = GpuAllocator(self.db, root=Path(os.environ.get("CAPSA_GPU_ROOT") or "/"))
        self.capsule_store = CapsuleStore(self.layout.capsules, self.db,
                                          limits=CapsuleLimits.from_config(config.capsules.limits))
        # On the engine: capsule push and pull are durable runs on the download queue.
        self.capsule_distribution = CapsuleDistribution(self.capsule_store, registry=registry_config(config),
                                                        s3=s3_config(config), engine=self.engine)
        job_records = JobStore(self.db)
        self.capsules = CapsuleManager(self.capsule_store, self.supervisor, job_records)
        # The image root first: it is acquired before the job is recorded (a failed pull leaves no job).
        self.job_resources = (ImageRootResource(self.images), NetworkResource(self.networks),
                              VolumeResource(self.volumes), GpuResource(self.gpus), CapsuleResource(self.capsules))
        secret_box = SecretBox(home)
        self.jobs = JobService(self.db, home, self.supervisor, store=job_records, resources=self.job_resources,
                               stop_grace_s=config.jobs.stop_grace_s, secret_box=secret_box,
                               upload_limits=UploadLimits(**config.jobs.uploads.model_dump()))
        self.scheduler = Scheduler(self.jobs, chores=((60.0, self.jobs.uploads.cleanup),
                                                      (5.0, self.jobs.retry_pending_exits)))
        undo.callback(self.scheduler.close)
        self.metrics = open_metrics(config.metrics, self.db, home, self.jobs, network_stats=self._network_stats,
                                    pipeline=PipelineCollector(self.engine, self.pipeline_stats))
        undo.callback(self.metrics.close)
        # A build cache shared across homes (CI, test daemons): CAPSA_RUNTIME_CACHE wins over runtimes.cache_dir.
        cache = os.environ.get("CAPSA_RUNTIME_CACHE", "").strip() or str(config.runtimes.cache_dir or "")
        self.runtimes = RuntimeService(self.engine, self.images, self.jobs, home, queue=RUNTIME_QUEUE,
                                       cache_dir=Path(cache) if cache else None)
        self.jobs.use_runtimes(self.runtimes.resolve)
        self.workflows = WorkflowService(
            self.db, self.engine, self.jobs, secret_box=secret_box, queue=WORKFLOW_QUEUE, registries=Registries(
                runtime_image=self.runtimes.image_for, volume_exists=self._volume_exists,
                network_exists=lambda name: any(n.name == name for n in self.networks.list()),
                capsule_exists=self.capsules.exists))
        # Runs other tables name by id outlive retention: a retried pull request returns its run's
        # outcome, a workflow record shows its run.
        self.engine.keep_runs_referenced_by("SELECT run_id FROM image_pull_requests")
        self.engine.keep_runs_referenced_by("SELECT run_id FROM workflows WHERE run_id != ''")
        self.housekeeper = Housekeeper(self.jobs, self.engine)

    def _reconcile(self) -> None:
        """Jobs first (adopt survivors, fail the lost), then what every job borrowed, from what is live."""
        self.jobs.attach_supervisor()
        live = self.jobs.live_job_ids()
        for resource in self.job_resources:
            resource.reconcile(live)
        self.jobs.uploads.cleanup()   # sessions a previous daemon left unfinished
        self.scheduler.start()
        self.engine.resume()  # after every machine is registered
        self._start_policies()

    def _start_policies(self) -> None:
        """Periodic work server.yaml asks for: database backups, capsule GC and retention (closed before the engine)."""
        backup, gc, retention = self.config.backup, self.config.capsules.gc, self.config.retention
        if retention.jobs_older_than_s is not None or retention.fsm_runs_older_than_s is not None:
            keeper = RetentionPolicy(self.housekeeper, interval_s=retention.interval_s,
                                     jobs_older_than_s=retention.jobs_older_than_s,
                                     fsm_runs_older_than_s=retention.fsm_runs_older_than_s)
            keeper.start()
            self._policies.append(keeper)
        if backup.interval_s is not None and backup.dir is not None:
            schedule = BackupSchedule(self.db.path, backup.dir, interval_s=backup.interval_s, keep=backup.keep)
            schedule.start()
            self._policies.append(schedule)
        if gc.interval_s is not None:
            policy = CapsuleGcPolicy(self.engine, interval_s=gc.interval_s, older_than_s=gc.older_than_s,
                                     unused=gc.unused)
            policy.start()
            self._policies.append(policy)

    def _close_policies(self) -> None:
        while self._policies:
            self._policies.pop().close()

    def _join_pool(self, undo: contextlib.ExitStack) -> None:
        """Register in the pool and run its assignments: after jobs (it runs pool jobs through them),
        before serving; closed after the server stopped and before jobs end (it leaves the pool first)."""
        self.cluster = None
        if self.config.cluster is None:
            return
        from capsa.cluster import ClusterComponent

        self.cluster = ClusterComponent(self.config, jobs=self.jobs, images=self.images,
                                        capsule_store=self.capsule_store, gpus=self.gpus, listen=self.listen)
        self.cluster.start()
        undo.callback(self.cluster.close)

    def _serve(self, undo: contextlib.ExitStack) -> None:
        from capsa.api.server import build_server

        self.fd_broker = FdBroker(self.layout.run / "copy" / "fds.sock")
        self.fd_broker.start()
        undo.callback(self.fd_broker.close)   # after the server stopped (callbacks run in reverse)
        try:
            server = build_server(self, self.listen, cgroup_version=self.cgroup_version)
        except (OSError, RuntimeError):   # taken between check_bindable and now (gRPC says RuntimeError)
            raise Unavailable(f"cannot listen on {self.listen}: the address cannot be bound"
                              " (in use, or not an address of this host)") from None
        server.start()
        self.server = server
        undo.callback(lambda: server.stop(grace=2).wait(5))
        self.metrics.start()
        self.layout.run.mkdir(parents=True, exist_ok=True)
        self.layout.pid_file.write_text(str(os.getpid()))

    # -- shutdown ---------------------------------------------------------------------------------------
    def _end_jobs(self, *, started_now: bool) -> None:
        """Stop listening to the supervisor; unless jobs are to survive, stop it and give back what they held.

        A start-up that fails stops only a supervisor it started itself, never one already running jobs.
        """
        self.supervisor.close()
        if self.options.live_restore or not (self._serving or started_now):
            return
        self.supervisor.shutdown()
        for resource in self.job_resources:
            try:
                resource.reconcile(())   # no job is live any more
            except Exception:   # shutdown goes on; the next start reconciles again
                log.exception("giving back what jobs held (%s) at shutdown failed", type(resource).__name__)
        if self.job_resources:
            with contextlib.suppress(CapsaError):
                self.networks.teardown()   # capsa's bridges and rules, now that no job is attached

    def _remove_pid_file(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.layout.pid_file.unlink()

    # -- callbacks for components ---------------------------------------------------------------------
    def _network_stats(self, job_id: str) -> NetStats | None:
        """Counters of a job's own network namespace; None in host mode."""
        try:
            return self.networks.network_stats(job_id)
        except CapsaError:
            return None

    def _volume_exists(self, name: str) -> bool:
        try:
            self.volumes.get(name)
        except CapsaError:
            return False
        return True


def check_bindable(listen: str) -> None:
    """Fail with one line if ``listen`` (HOST:PORT) cannot be bound; ``unix:`` addresses are left to gRPC."""
    if listen.startswith("unix:"):
        return
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise Unavailable(f"cannot listen on {listen}: expected HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as gRPC does: TIME_WAIT is no conflict
            probe.bind(address)
    except OSError as exc:
        raise Unavailable(f"cannot listen on {listen}: {exc.strerror or exc}") from None


def _load_config(options: DaemonOptions) -> ServerConfig:
    if options.config_path is not None:
        return load_server_config(options.config_path)
    listen = options.listen or "127.0.0.1:7443"
    return ensure_home(options.home, address=listen, listen=listen)


def run_daemon(options: DaemonOptions) -> int:
    """Run until SIGTERM/SIGINT. Readiness is announced only when a client can use the daemon: the
    API listens and (for a home the daemon bootstraps) client.yaml exists, so whoever waits for the
    ready file or systemd's READY=1 can run ``capsa`` commands at once."""
    from capsa.readiness import Notifier, remove_ready_file, write_ready_file

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    notifier = Notifier.from_environment()   # before any child is started: they must not inherit it
    # A ready file left by an earlier daemon would tell a waiter "ready" before this one is.
    remove_ready_file(options.ready_file)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    notifier.status("starting")
    daemon = None
    try:
        daemon = Daemon(options)   # loads the config; on a fresh home, creates certificates and client.yaml
        daemon.start()
    except BaseException:
        notifier.stopping("start failed")
        if daemon is not None and not options.live_restore:
            # A start that failed half way (say, the port is taken) is stopped like a clean stop would
            # be, so it leaves no supervisor or zygote behind; with --live-restore they keep the jobs.
            try:
                daemon.stop()
            except Exception:
                log.exception("cleaning up after the failed start")
        raise
    listen = options.listen or daemon.config.listen
    client_config = daemon.layout.client_config
    if options.config_path is None and not client_config.is_file():
        # ensure_home created it before start(); someone removed it since. No ready file then: a waiter
        # would only run into "no client configuration found".
        log.error("%s is missing: no ready file written, clients of this home cannot connect", client_config)
    elif options.ready_file is not None:
        write_ready_file(options.ready_file, f"listen={listen}\npid={os.getpid()}\nhome={daemon.home}\n"
                                             f"client_config={client_config}\n")
    notifier.ready(f"listening on {listen}")
    print(f"capsa daemon ready on {listen}", flush=True)
    done.wait()
    notifier.stopping()
    remove_ready_file(options.ready_file)
    daemon.stop()
    return 0
