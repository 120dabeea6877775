"""The daemon's composition root: builds every component from ``ServerConfig`` and owns start-up,
reconciliation and shutdown order. The gRPC surface lives in ``capsa.api.server``.

Start-up order matters: the supervisor (which forks job processes) is a
separate process started before the gRPC server creates its threads, so this
process never forks user code or changes namespaces (ARCHITECTURE.md, fork
safety).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from capsa.capsules import CapsuleStore
from capsa.capsules.manager import CapsuleManager
from capsa.config import HomeLayout, ServerConfig, ensure_home, load_server_config
from capsa.errors import CapsaError
from capsa.fsm import Engine, RetryPolicy
from capsa.images.setup import open_image_service, open_snapshotter_from_config
from capsa.jobs.attachments import JobAttachments
from capsa.jobs.schedule import Scheduler
from capsa.jobs.service import JobService
from capsa.jobs.uploads import UploadLimits
from capsa.metrics import DaemonMetrics, open_metrics
from capsa.networks import NetworkManager
from capsa.runtime.client import SupervisorClient, ensure_supervisor
from capsa.runtime.gpu import GpuAllocator
from capsa.runtimes import QUEUE as RUNTIME_QUEUE
from capsa.runtimes import RuntimeService
from capsa.state import Database
from capsa.volumes import VolumeManager
from capsa.workflows import QUEUE as WORKFLOW_QUEUE
from capsa.workflows import Registries, WorkflowService

__all__ = ["Daemon", "DaemonOptions", "run_daemon"]

log = logging.getLogger("capsa.daemon")


@dataclass(frozen=True)
class DaemonOptions:
    home: Path
    config_path: Path | None = None
    listen: str | None = None
    live_restore: bool = False   # keep jobs running when the daemon stops cleanly


class Daemon:
    def __init__(self, options: DaemonOptions) -> None:
        self.options = options
        self.config = _load_config(options)
        self.home = Path(self.config.home)
        self.layout = HomeLayout(self.home)
        self.db: Database | None = None
        self.supervisor: SupervisorClient | None = None
        self.jobs: JobService | None = None
        self.engine: Engine | None = None
        self.workflows: WorkflowService | None = None
        self.scheduler: Scheduler | None = None
        self.metrics: DaemonMetrics | None = None
        self.snapshotter: Any = None
        self.images: Any = None
        self.server: grpc.Server | None = None
        self.cluster: Any = None   # capsa.cluster.ClusterComponent when server.yaml has a cluster section
        self.stopped = threading.Event()

    def start(self) -> None:
        self.db = Database(self.layout.db)
        self.supervisor, _ = ensure_supervisor(self.home)
        cgroup_version = self.supervisor.ping().cgroup_version
        fsm = self.config.fsm
        # A workflow run holds its worker for the workflow's whole life: a queue of its own keeps
        # workflows from starving the shared pool, where the image pulls of their jobs run.
        # Runtime builds hold theirs while their build jobs run: a small queue of their own, too.
        self.engine = Engine(self.db, queues={WORKFLOW_QUEUE: 16, RUNTIME_QUEUE: 2, **fsm.queues}, retry=RetryPolicy(
            base_s=fsm.retry_base_s, cap_s=fsm.retry_cap_s, max_attempts=fsm.max_attempts))
        self.snapshotter = open_snapshotter_from_config(self.config, self.db, self.home)
        self.images = open_image_service(self.config, self.db, self.engine, self.home, self.snapshotter)
        self.networks = NetworkManager(self.db)
        self.volumes = VolumeManager(self.db, self.layout.volumes)
        # CAPSA_GPU_ROOT: where the driver's /proc and /dev live (default /; tests point it at a fake tree).
        self.gpus = GpuAllocator(self.db, root=Path(os.environ.get("CAPSA_GPU_ROOT") or "/"))
        self.jobs = JobService(self.db, self.home, self.supervisor, stop_grace_s=self.config.jobs.stop_grace_s,
                               images=self.images, upload_limits=UploadLimits(**self.config.jobs.uploads.model_dump()),
                               attachments=JobAttachments(self.networks, self.volumes, self.gpus))
        self.capsule_store = CapsuleStore(self.layout.capsules, self.db)
        self.capsules = CapsuleManager(self.capsule_store, self.supervisor, self.jobs)
        self.jobs.capsules = self.capsules
        self.jobs.attach_supervisor()
        self.capsules.reconcile()   # after the jobs' reconciliation: verify, re-mount or release attachments
        running = [j.id for j in self.jobs.list() if j.state.value == "RUNNING"]
        self.networks.reconcile(running)   # leftovers of jobs that ended while the daemon was down go
        self.volumes.reconcile(running)
        self.gpus.reconcile(running)
        self.jobs.uploads.cleanup()   # sessions a previous daemon left unfinished
        self.scheduler = Scheduler(self.jobs, chores=((60.0, self.jobs.uploads.cleanup),))
        self.scheduler.start()
        self.metrics = open_metrics(self.config.metrics, self.db, self.home, self.jobs,
                                    network_stats=self._network_stats)
        # A build cache shared across homes (CI, test daemons) until server.yaml grows runtimes.cache_dir.
        cache = os.environ.get("CAPSA_RUNTIME_CACHE", "").strip()
        self.runtimes = RuntimeService(self.engine, self.images, self.jobs, self.home, queue=RUNTIME_QUEUE,
                                       cache_dir=Path(cache) if cache else None)
        self.jobs.use_runtimes(self.runtimes.resolve)
        self.workflows = WorkflowService(self.db, self.engine, self.jobs, queue=WORKFLOW_QUEUE, registries=Registries(
            runtime_image=self.runtimes.image_for,
            volume_exists=self._volume_exists,
            network_exists=lambda name: any(n.name == name for n in self.networks.ls())))
        self.engine.resume()  # after every machine is registered
        from capsa.api.server import build_server

        listen = self.options.listen or self.config.listen
        if self.config.cluster is not None:   # after jobs (it runs pool jobs through them), before serving
            from capsa.cluster import ClusterComponent

            self.cluster = ClusterComponent(self.config, jobs=self.jobs, images=self.images,
                                            capsule_store=self.capsule_store, gpus=self.gpus, listen=listen)
            self.cluster.start()
        server = build_server(self, listen, cgroup_version=cgroup_version)
        server.start()
        self.server = server
        self.metrics.start()
        self.layout.run.mkdir(parents=True, exist_ok=True)
        self.layout.pid_file.write_text(str(os.getpid()))
        log.info("capsa daemon listening on %s (home %s)", listen, self.home)

    def _release_node_resources(self) -> None:
        """Jobs are gone after a shutdown: free their networks and volumes, remove capsa's bridges and rules."""
        if getattr(self, "networks", None) is not None:
            for att in self.networks.attachments():
                with contextlib.suppress(CapsaError):
                    self.networks.detach(att.job_id)
            with contextlib.suppress(CapsaError):
                self.networks.teardown()
        if getattr(self, "volumes", None) is not None:
            with contextlib.suppress(CapsaError):
                self.volumes.reconcile([])
        if getattr(self, "gpus", None) is not None:
            self.gpus.reconcile([])

    def _network_stats(self, job_id: str) -> Any:
        """Counters of a job's own network namespace; None in host mode."""
        try:
            return self.networks.network_stats(job_id)
        except CapsaError:
            return None

    def _volume_exists(self, name: str) -> bool:
        try:
            self.volumes.inspect(name)
        except CapsaError:
            return False
        return True

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=2).wait(5)
        if self.cluster is not None:   # leave the pool before the jobs it runs go away
            self.cluster.close()
        for part in (self.scheduler, self.metrics):
            if part is not None:
                part.close()
        if getattr(self, "engine", None) is not None:
            self.engine.shutdown(wait=True, timeout=10)
        if getattr(self, "snapshotter", None) is not None:
            self.snapshotter.close()
        if self.supervisor is not None:
            self.supervisor.close()
            if not self.options.live_restore:
                self.supervisor.shutdown()
                self._release_node_resources()
        if self.db is not None:
            self.db.close(checkpoint=True)
        with contextlib.suppress(FileNotFoundError):
            self.layout.pid_file.unlink()
        self.stopped.set()


def _load_config(options: DaemonOptions) -> ServerConfig:
    if options.config_path is not None:
        return load_server_config(options.config_path)
    listen = options.listen or "127.0.0.1:7443"
    return ensure_home(options.home, address=listen, listen=listen)


def run_daemon(options: DaemonOptions) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    daemon = Daemon(options)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    daemon.start()
    print(f"capsa daemon ready on {options.listen or daemon.config.listen}", flush=True)
    done.wait()
    daemon.stop()
    return 0
