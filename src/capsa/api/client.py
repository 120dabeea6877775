"""A typed client for the capsa daemon: one method per RPC, typed errors out.

Example::

    from capsa.api.client import CapsaClient
    with CapsaClient.from_config() as client:
        job = client.run_job(["/bin/echo", "hi"])
        for chunk in client.stream_logs(job.id, follow=True):
            ...
"""

from __future__ import annotations

import datetime as dt
import importlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc

from capsa.api.errors import from_rpc_error
from capsa.config.client import NodeConfig, find_client_config, load_client_config
from capsa.config.pem import cert_expiry
from capsa.errors import CapsaError, Unauthorized, Unavailable

_GEN = "capsa.api.gen.capsa.v1"


class _LazyModule:
    """A generated protobuf module, imported at its first use.

    A CLI command uses one or two of the nine services; importing all their
    message modules up front costs more than the command's RPC.
    """

    __slots__ = ("_module", "_name")

    def __init__(self, name: str) -> None:
        self._name = f"{_GEN}.{name}"
        self._module: Any = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


class _Stub:
    """A service stub created on first access and then cached on the instance (non-data descriptor)."""

    def __init__(self, module: str, stub: str) -> None:
        self.module, self.stub = module, stub
        self.attr = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        stub = getattr(importlib.import_module(f"{_GEN}.{self.module}"), self.stub)(obj.channel)
        obj.__dict__[self.attr] = stub
        return stub


cpb = _LazyModule("capsules_pb2")
common_pb2 = _LazyModule("common_pb2")
fpb = _LazyModule("files_pb2")
ipb = _LazyModule("images_pb2")
pb = _LazyModule("jobs_pb2")
mpb = _LazyModule("metrics_pb2")
npb = _LazyModule("networks_pb2")
rpb = _LazyModule("runtimes_pb2")
hpb = _LazyModule("housekeeping_pb2")
wpb = _LazyModule("workflows_pb2")
epb = _LazyModule("events_pb2")

__all__ = ["CapsaClient"]


class CapsaClient:
    jobs = _Stub("jobs_pb2_grpc", "JobServiceStub")
    node = _Stub("jobs_pb2_grpc", "NodeServiceStub")
    images = _Stub("images_pb2_grpc", "ImageServiceStub")
    networks = _Stub("networks_pb2_grpc", "NetworkServiceStub")
    volumes = _Stub("networks_pb2_grpc", "VolumeServiceStub")
    metrics = _Stub("metrics_pb2_grpc", "MetricsServiceStub")
    workflows = _Stub("workflows_pb2_grpc", "WorkflowServiceStub")
    capsules = _Stub("capsules_pb2_grpc", "CapsuleServiceStub")
    runtimes = _Stub("runtimes_pb2_grpc", "RuntimeServiceStub")
    events = _Stub("events_pb2_grpc", "EventServiceStub")
    interactive = _Stub("interactive_pb2_grpc", "InteractiveServiceStub")
    files = _Stub("files_pb2_grpc", "FileServiceStub")
    housekeeping = _Stub("housekeeping_pb2_grpc", "HousekeepingServiceStub")

    def __init__(self, node: NodeConfig, *, timeout: float = 60.0) -> None:
        expiry = cert_expiry(node.cert_pem)
        if expiry < dt.datetime.now(dt.UTC):
            raise Unauthorized(f"the client certificate in your config expired on {expiry:%Y-%m-%d %H:%M} UTC;"
                               " ask an administrator for a new client config")
        self.address = node.address
        self.timeout = timeout
        creds = grpc.ssl_channel_credentials(
            root_certificates=node.ca_pem.encode(),
            private_key=node.key_pem.encode(),
            certificate_chain=node.cert_pem.encode(),
        )
        self.channel = grpc.secure_channel(node.address, creds, options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.enable_retries", 0),
            # A restarted daemon is found again within a second or two, not after gRPC's default
            # reconnect backoff (up to two minutes): submissions retry across a restart.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ])
        # Service stubs are the class-level _Stub attributes: each is built on first use.

    @classmethod
    def from_config(cls, path: Path | None = None, *, node: str | None = None, timeout: float = 60.0) -> CapsaClient:
        config = load_client_config(find_client_config(path))
        return cls(config.select(node), timeout=timeout)

    def __enter__(self) -> CapsaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: Any, request: Any, *, timeout: float | None = -1.0) -> Any:
        try:
            return method(request, timeout=self.timeout if timeout == -1.0 else timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address=self.address) from None

    # A submission carries a request id, so sending it again cannot make a second job: when the
    # daemon is unreachable (restarting, briefly overloaded) it is resent with the same id.
    SUBMIT_TRIES = 10
    SUBMIT_RETRY_S = 30.0
    # Called once, at a submission's first retry, with the error and the seconds left to retry: the
    # CLI says why it waits instead of hanging silently while a daemon is down.
    on_submit_retry: Callable[[CapsaError, float], None] | None = None

    def _submit(self, send: Callable[[], Any]) -> Any:
        """``send()`` (one RPC whose request has a request id), retried on UNAVAILABLE with backoff:
        at most SUBMIT_TRIES tries within SUBMIT_RETRY_S seconds."""
        import time

        deadline = time.monotonic() + self.SUBMIT_RETRY_S
        delay = 0.1
        for attempt in range(1, self.SUBMIT_TRIES + 1):
            try:
                return send()
            except (grpc.RpcError, Unavailable) as exc:
                # send() may go through _call (errors already typed) or hold a raw stream (gRPC's).
                error = exc if isinstance(exc, Unavailable) else from_rpc_error(exc, address=self.address)
                left = deadline - time.monotonic()
                if not isinstance(error, Unavailable) or attempt == self.SUBMIT_TRIES or left <= 0:
                    raise error from None
                import random  # only on a retry: the first try (nearly always the only one) needs none

                if attempt == 1 and self.on_submit_retry is not None:
                    self.on_submit_retry(error, left)

                time.sleep(min(left, delay * (0.5 + random.random())))   # jitter: a burst does not resync
                delay = min(delay * 2, 3.0)
        raise AssertionError("unreachable")

    @staticmethod
    def new_request_id() -> str:
        import uuid

        return uuid.uuid4().hex

    # -- jobs -----------------------------------------------------------------------------
    def run_job(self, command: list[str], *, env: dict[str, str] | None = None, workdir: str = "",
                name: str = "", max_cpu: int = 0, cpu_cores: str = "", max_memory_mb: int = 0,
                max_iobps: int = 0, max_pids: int = 0, image: str = "", pull: str = "", user: str = "",
                seccomp: str = "", network: str = "", volumes: list[str] | None = None,
                secret_env: dict[str, str] | None = None, upload_session: str = "", schedule: str = "",
                timeout: str = "", capsules: list[str] | None = None, runtime: str = "", gpus: int = 0,
                request_id: str = "", ports: list[str] | None = None, restart: str = "",
                log_max_size: str = "", labels: dict[str, str] | None = None, auto_remove: bool = False,
                stdin: bool = False, tty: bool = False, tty_size: tuple[int, int] = (0, 0)) -> pb.Job:
        """Start a job; ``request_id`` (default: a fresh uuid4) makes retries safe, see :meth:`_submit`."""
        request = pb.RunJobRequest(
            labels=labels or {}, auto_remove=auto_remove,
            request_id=request_id or self.new_request_id(),
            command=command, env=env or {}, workdir=workdir, name=name, image=image, pull=pull, user=user,
            gpus=gpus, restart=restart, log_max_size=log_max_size,
            seccomp=seccomp, network=network, volumes=volumes or [], capsules=capsules or [], runtime=runtime,
            secret_env=secret_env or {}, upload_session=upload_session, schedule=schedule, timeout=timeout,
            ports=ports or [], stdin=stdin, tty=tty, tty_rows=tty_size[0], tty_cols=tty_size[1],
            resources=pb.Resources(max_cpu=max_cpu, cpu_cores=cpu_cores, max_memory_mb=max_memory_mb,
                                   max_iobps=max_iobps, max_pids=max_pids),
        )
        return self._submit(lambda: self._call(self.jobs.RunJob, request))

    def upload_files(self, chunks: Iterable[pb.UploadChunk], *, finish: bool = True) -> pb.UploadResult:
        """Stream raw upload chunks (see :meth:`upload_paths` for local files); returns the staged session.

        ``finish`` appends the end marker the daemon requires before it keeps an upload.
        """
        def messages() -> Iterator[pb.UploadChunk]:
            yield from chunks
            if finish:
                yield pb.UploadChunk(done=True)

        return self._client_stream(self.jobs.UploadFiles, messages())

    def _server_stream(self, method: Any, request: Any, *, timeout: float | None) -> Iterator[Any]:
        """The messages of a server-streaming call, its errors typed; cancelled when the caller stops early."""
        stream = method(request, timeout=timeout)
        try:
            yield from stream
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address=self.address) from None
        finally:
            stream.cancel()

    def _client_stream(self, method: Any, messages: Iterator[Any]) -> Any:
        """A client-streaming call whose messages are made locally as it goes (a walk, a tar).

        If making them fails, gRPC cancels the call and — the end marker never sent — the daemon keeps
        nothing; the caller then gets that local failure, not gRPC's "cancelled".
        """
        failure: list[BaseException] = []

        def guarded() -> Iterator[Any]:
            try:
                yield from messages
            except Exception as exc:
                failure.append(exc)
                raise

        try:
            return method(guarded(), timeout=None)
        except grpc.RpcError as exc:
            if failure:
                raise failure[0] from None
            raise from_rpc_error(exc, address=self.address) from None

    def upload_paths(self, paths: list[str], *,
                     on_skip: Callable[[str, str], None] | None = None) -> pb.UploadResult:
        """Upload local files/directories (symlinks kept as symlinks) for a job's /work, in chunks."""
        from capsa.upload_items import check_local, walk_local

        check_local(paths)

        def chunks() -> Iterator[pb.UploadChunk]:
            for entry, data in walk_local(paths, on_skip=on_skip):
                if entry is None:
                    yield pb.UploadChunk(data=data)
                else:
                    yield pb.UploadChunk(entry=pb.UploadEntry(
                        path=entry.path, type=entry.kind, mode=entry.mode, size=entry.size,
                        link_target=entry.target), data=data)

        return self.upload_files(chunks())

    def cancel_job(self, job_id: str) -> pb.Job:
        return self._call(self.jobs.CancelJob, pb.CancelJobRequest(id=job_id))

    def metrics_stream(self, job_id: str, *, follow: bool = False,
                       history: bool = False) -> Iterator[mpb.JobMetrics]:
        request = mpb.MetricsStreamRequest(id=job_id, follow=follow, history=history)
        yield from self._server_stream(self.metrics.MetricsStream, request, timeout=None if follow else self.timeout)

    def node_stats(self) -> mpb.NodeStats:
        return self._call(self.metrics.GetNodeStats, common_pb2.Empty())

    def get_job(self, job_id: str) -> pb.Job:
        return self._call(self.jobs.GetJob, pb.GetJobRequest(id=job_id))

    def list_jobs(self, *, all: bool = False, limit: int = 0, filters: dict[str, Any] | None = None) -> list[pb.Job]:
        """Jobs newest first: every matching one (``limit`` 0), or the newest ``limit``.

        Fetched in pages of at most PAGE_SIZE, so no single response is large.
        """
        jobs: list[pb.Job] = []
        token = ""
        while True:
            want = self.PAGE_SIZE if not limit else min(self.PAGE_SIZE, limit - len(jobs))
            page = self.list_jobs_page(all=all, limit=want, page_token=token, filters=filters)
            jobs.extend(page.jobs)
            token = page.next_page_token
            if not token or (limit and len(jobs) >= limit):
                return jobs[:limit] if limit else jobs

    PAGE_SIZE = 1000

    def list_jobs_page(self, *, all: bool = False, limit: int = 0, page_token: str = "",
                       filters: dict[str, Any] | None = None) -> pb.ListJobsResponse:
        """``filters``: ListJobsRequest's filter fields (states, names, images, workflows, labels, since_ns)."""
        return self._call(self.jobs.ListJobs, pb.ListJobsRequest(all=all, limit=limit, page_token=page_token,
                                                                 **(filters or {})))

    def stop_job(self, job_id: str, *, grace_seconds: float | None = None) -> pb.Job:
        """SIGTERM, then SIGKILL after ``grace_seconds`` (None: the daemon's default, 10 s; 0: SIGKILL at once)."""
        return self._call(self.jobs.StopJob, pb.StopJobRequest(id=job_id, grace_seconds=grace_seconds),
                          timeout=None)

    def delete_job(self, job_id: str, *, force: bool = False) -> str:
        return self._call(self.jobs.DeleteJob, pb.DeleteJobRequest(id=job_id, force=force)).id

    def stream_logs(self, job_id: str, *, follow: bool = False, from_seq: int = 0, tail: int = 0,
                    since_ns: int = 0, until_ns: int = 0, stream: int = 0,
                    final_job: bool = False) -> Iterator[pb.LogChunk]:
        """Chunks of a job's log; with ``final_job`` the last message carries the ended Job (``job`` set)."""
        request = pb.StreamLogsRequest(id=job_id, follow=follow, from_seq=from_seq, tail=tail, since_ns=since_ns,
                                       until_ns=until_ns, stream=stream, final_job=final_job)
        yield from self._server_stream(self.jobs.StreamLogs, request, timeout=None if follow else self.timeout)

    # -- files (capsa cp) ----------------------------------------------------------------
    def copy_out(self, job_id: str, path: str, *, fast_token: str = "") -> Iterator[bytes]:
        """The tar bytes of JOB:path (under /work), in chunks as they arrive (``fast_token``: see fast_path)."""
        request = fpb.CopyOutRequest(job_id=job_id, path=path, fast_token=fast_token)
        for chunk in self._server_stream(self.files.CopyOut, request, timeout=None):
            yield chunk.data

    def watch_events(self, *, types: list[str] | None = None, since_ns: int = 0, follow: bool = True,
                     ids: list[str] | None = None) -> Iterator[Any]:
        """Lifecycle events from ``since_ns`` (replayed), then new ones while ``follow``."""
        request = epb.EventsRequest(types=types or [], since_ns=since_ns, follow=follow, ids=ids or [])
        yield from self._server_stream(self.events.Events, request, timeout=None if follow else self.timeout)

    def copy_in(self, job_id: str, path: str, tar_chunks: Iterable[bytes], *,
                fast_token: str = "") -> fpb.CopyInResult:
        """Stream tar bytes (one top-level entry) to JOB:path of a running job."""
        from capsa.fdpass import ConnectionGone

        def messages() -> Iterator[fpb.CopyInChunk]:
            yield fpb.CopyInChunk(job_id=job_id, path=path, fast_token=fast_token)
            try:
                for data in tar_chunks:
                    yield fpb.CopyInChunk(data=data)
            except ConnectionGone:
                # The daemon closes the descriptor connection when it refuses the copy (a hostile path:
                # exit 11), and the next descriptor sent can fail before its status arrives. End the
                # stream without `done` (nothing is kept): the call then fails with the daemon's reason.
                return
            yield fpb.CopyInChunk(done=True)

        return self._client_stream(self.files.CopyIn, messages())

    def fast_path(self) -> fpb.FastPathReply:
        """A one-time token and the daemon's descriptor socket for capsa cp's local fast path (capsa.fdpass)."""
        return self._call(self.files.FastPath, fpb.FastPathRequest())

    # -- images ----------------------------------------------------------------------------
    def pull_image(self, ref: str, *, platform: str = "", insecure: bool = False,
                   expected_digest: str = "", request_id: str = "") -> Iterator[ipb.PullProgress]:
        """Progress of a pull; an UNAVAILABLE daemon before the first progress message is retried with
        the same request id (the daemon joins the pull it already started)."""
        request = ipb.PullImageRequest(ref=ref, platform=platform, insecure=insecure,
                                       expected_digest=expected_digest,
                                       request_id=request_id or self.new_request_id())

        def first() -> tuple[Any, Any]:
            stream = self.images.PullImage(request, timeout=None)
            return stream, next(stream, None)

        stream, head = self._submit(first)
        try:
            if head is not None:
                yield head
                yield from stream
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address=self.address) from None

    def list_images(self) -> list[ipb.Image]:
        return list(self._call(self.images.ListImages, ipb.ListImagesRequest()).images)

    def inspect_image(self, ref: str) -> ipb.Image:
        return self._call(self.images.InspectImage, ipb.InspectImageRequest(ref=ref))

    def remove_image(self, ref: str, *, force: bool = False) -> list[str]:
        return list(self._call(self.images.RemoveImage, ipb.RemoveImageRequest(ref=ref, force=force)).removed)

    def prune_images(self, *, dry_run: bool = False) -> ipb.PruneImagesResponse:
        return self._call(self.images.PruneImages, ipb.PruneImagesRequest(dry_run=dry_run), timeout=None)

    def image_history(self, ref: str, *, limit: int = 20) -> list[ipb.FsmRun]:
        return list(self._call(self.images.ImageHistory, ipb.ImageHistoryRequest(ref=ref, limit=limit)).runs)

    def verify_images(self, ref: str = "", *, all: bool = False, repair: bool = False) -> list[ipb.ImageVerifyReport]:
        request = ipb.VerifyImagesRequest(ref=ref, all=all, repair=repair)
        return list(self._call(self.images.VerifyImages, request, timeout=None).reports)

    def tag_image(self, source: str, target: str) -> ipb.Image:
        return self._call(self.images.TagImage, ipb.TagImageRequest(source=source, target=target))

    def push_image(self, ref: str, destination: str = "", *, insecure: bool = False) -> Iterator[ipb.TransferProgress]:
        """Per-blob progress of a push; the last message has ``done`` and the manifest digest."""
        request = ipb.PushImageRequest(ref=ref, destination=destination, insecure=insecure)
        yield from self._server_stream(self.images.PushImage, request, timeout=None)

    def save_images(self, refs: list[str]) -> Iterator[ipb.ArchiveChunk]:
        """An OCI image-layout tar of ``refs``: the first chunk carries ``blob_bytes`` (for progress)."""
        request = ipb.SaveImageRequest(refs=refs)
        yield from self._server_stream(self.images.SaveImage, request, timeout=None)

    def load_image(self, chunks: Iterable[bytes], *, tag: str = "") -> list[ipb.Image]:
        """Import the images of an OCI image-layout tar sent as ``chunks``."""
        def messages() -> Iterator[ipb.LoadImageChunk]:
            yield ipb.LoadImageChunk(tag=tag)
            for data in chunks:
                yield ipb.LoadImageChunk(data=data)
            yield ipb.LoadImageChunk(done=True)

        return list(self._client_stream(self.images.LoadImage, messages()).images)

    def backup_database(self, dest: str) -> ipb.BackupDatabaseResponse:
        return self._call(self.images.BackupDatabase, ipb.BackupDatabaseRequest(dest=dest), timeout=None)

    # -- workflows ----------------------------------------------------------------------------
    def submit_workflow(self, yaml_text: str, *, base_dir: str = "", source: str = "",
                        request_id: str = "", labels: dict[str, str] | None = None) -> wpb.Workflow:
        request = wpb.SubmitWorkflowRequest(yaml=yaml_text, base_dir=base_dir, source=source, labels=labels or {},
                                            request_id=request_id or self.new_request_id())
        return self._submit(lambda: self._call(self.workflows.SubmitWorkflow, request))

    def list_workflows(self, *, limit: int = 0) -> list[wpb.Workflow]:
        return list(self._call(self.workflows.ListWorkflows, wpb.ListWorkflowsRequest(limit=limit)).workflows)

    def get_workflow(self, workflow_id: str) -> wpb.Workflow:
        return self._call(self.workflows.GetWorkflow, wpb.GetWorkflowRequest(id=workflow_id))

    def cancel_workflow(self, workflow_id: str) -> wpb.Workflow:
        return self._call(self.workflows.CancelWorkflow, wpb.CancelWorkflowRequest(id=workflow_id), timeout=None)

    # -- interactive (ADR-0013) ----------------------------------------------------------------
    def exec_job(self, job_id: str, command: list[str], *, env: dict[str, str] | None = None, user: str = "",
                 workdir: str = "") -> Any:
        """Run ``command`` inside a running job; its ``ExecResult`` once it exited (no deadline)."""
        from capsa.api.gen.capsa.v1 import interactive_pb2

        request = interactive_pb2.ExecRequest(job_id=job_id, command=command, env=env or {}, user=user,
                                              workdir=workdir)
        return self._call(self.interactive.Exec, request, timeout=None)

    def exec_stream(self, inputs: Iterator[Any]) -> Any:
        """The ``ExecStream`` call (outputs by iteration, ``cancel()`` ends it); ``inputs`` are ExecInput."""
        return self.interactive.ExecStream(inputs, timeout=None)

    def attach(self, inputs: Iterator[Any]) -> Any:
        """The ``Attach`` call (its outputs by iteration); an AttachInput with ``detach`` ends it once the input before it reached the job."""
        return self.interactive.Attach(inputs, timeout=None)

    # -- node --------------------------------------------------------------------------------
    def version(self) -> pb.VersionInfo:
        return self._call(self.node.GetVersion, common_pb2.Empty())

    def whoami(self) -> pb.Identity:
        return self._call(self.node.WhoAmI, common_pb2.Empty())

    def pipeline(self) -> pb.Pipeline:
        """The daemon's FSM queues and the image pulls in flight now."""
        return self._call(self.node.GetPipeline, common_pb2.Empty())

    # -- networks and volumes -------------------------------------------------------------------
    def create_network(self, name: str, cidr: str) -> npb.Network:
        return self._call(self.networks.CreateNetwork, npb.CreateNetworkRequest(name=name, cidr=cidr))

    def list_networks(self) -> list[npb.Network]:
        return list(self._call(self.networks.ListNetworks, npb.ListNetworksRequest()).networks)

    def remove_network(self, name: str) -> str:
        return self._call(self.networks.RemoveNetwork, npb.RemoveNetworkRequest(name=name)).name

    def create_volume(self, name: str, size: str, type: str = "filesystem") -> npb.Volume:
        return self._call(self.volumes.CreateVolume, npb.CreateVolumeRequest(name=name, size=size, type=type))

    def list_volumes(self) -> list[npb.Volume]:
        return list(self._call(self.volumes.ListVolumes, npb.ListVolumesRequest()).volumes)

    def remove_volume(self, name: str) -> str:
        return self._call(self.volumes.RemoveVolume, npb.RemoveVolumeRequest(name=name)).name

    # -- capsules ------------------------------------------------------------------------------
    def create_capsule(self, name: str, version: str, chunks: Iterable[bytes], *,
                       dependencies: Iterable[str] = (), labels: dict[str, str] | None = None,
                       request_id: str = "") -> cpb.Capsule:
        """Upload the bytes of a tar (plain or compressed) of the capsule's files as ``name@version``.

        Not retried (the chunks are consumed once); ``request_id`` lets a caller that kept the bytes
        resend safely."""
        header = cpb.CapsuleHeader(name=name, version=version, dependencies=list(dependencies), labels=labels or {},
                                   request_id=request_id or self.new_request_id())

        def messages() -> Iterator[cpb.CreateCapsuleRequest]:
            yield cpb.CreateCapsuleRequest(header=header)
            for chunk in chunks:
                yield cpb.CreateCapsuleRequest(data=chunk)

        try:
            return self.capsules.Create(messages(), timeout=None)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address=self.address) from None

    def list_capsules(self, name: str = "") -> list[cpb.Capsule]:
        return list(self._call(self.capsules.List, cpb.ListCapsulesRequest(name=name)).capsules)

    def inspect_capsule(self, ref: str) -> cpb.Capsule:
        return self._call(self.capsules.Inspect, _capsule_ref(ref))

    def remove_capsule(self, ref: str) -> str:
        return self._call(self.capsules.Remove, _capsule_ref(ref)).removed

    def pin_capsule(self, ref: str) -> cpb.Capsule:
        return self._call(self.capsules.Pin, _capsule_ref(ref))

    def unpin_capsule(self, ref: str) -> cpb.Capsule:
        return self._call(self.capsules.Unpin, _capsule_ref(ref))

    def attach_capsule(self, job_id: str, capsule: str, *, target: str = "") -> cpb.MountChange:
        return self._call(self.capsules.Attach, cpb.AttachCapsuleRequest(job_id=job_id, capsule=capsule, target=target))

    def swap_capsule(self, job_id: str, capsule: str) -> cpb.MountChange:
        return self._call(self.capsules.Swap, cpb.SwapCapsuleRequest(job_id=job_id, capsule=capsule))

    def detach_capsule(self, job_id: str, name: str) -> cpb.MountChange:
        return self._call(self.capsules.Detach, cpb.DetachCapsuleRequest(job_id=job_id, name=name))

    def push_capsule(self, capsule: str, destination: str, *, insecure: bool = False) -> cpb.PushCapsuleResponse:
        return self._call(self.capsules.Push, cpb.PushCapsuleRequest(capsule=capsule, destination=destination,
                                                                     insecure=insecure), timeout=None)

    def pull_capsule(self, source: str, *, insecure: bool = False) -> cpb.Capsule:
        return self._call(self.capsules.Pull, cpb.PullCapsuleRequest(source=source, insecure=insecure), timeout=None)

    def verify_capsules(self, ref: str = "", *, all: bool = False,
                        repair: bool = False) -> list[cpb.CapsuleVerifyReport]:
        request = cpb.VerifyCapsulesRequest(ref=ref, all=all, repair=repair)
        return list(self._call(self.capsules.Verify, request, timeout=None).reports)

    def gc_capsules(self, *, unused: bool = False, older_than_seconds: float = 0.0,
                    dry_run: bool = False) -> cpb.GcCapsulesResponse:
        return self._call(self.capsules.Gc, cpb.GcCapsulesRequest(unused=unused, older_than_seconds=older_than_seconds,
                                                                  dry_run=dry_run), timeout=None)

    # -- runtimes ------------------------------------------------------------------------------
    def build_runtime(self, spec_yaml: str, *, force: bool = False,
                      source: str = "") -> Iterator[rpb.BuildProgress]:
        """Stream a runtime build: log bytes as they come, then a message with done=True."""
        request = rpb.BuildRuntimeRequest(spec_yaml=spec_yaml, force=force, source=source)
        yield from self._server_stream(self.runtimes.BuildRuntime, request, timeout=None)

    def list_runtimes(self) -> list[rpb.Runtime]:
        return list(self._call(self.runtimes.ListRuntimes, rpb.ListRuntimesRequest()).runtimes)

    def inspect_runtime(self, name: str) -> rpb.Runtime:
        return self._call(self.runtimes.InspectRuntime, rpb.InspectRuntimeRequest(name=name))

    def remove_runtime(self, name: str, *, force: bool = False) -> str:
        return str(self._call(self.runtimes.RemoveRuntime, rpb.RemoveRuntimeRequest(name=name, force=force)).removed)

    # -- housekeeping ------------------------------------------------------------------------
    def prune(self, *, older_than: str = "", states: list[str] | None = None,
              dry_run: bool = False) -> hpb.PruneResponse:
        request = hpb.PruneRequest(older_than=older_than, states=states or [], dry_run=dry_run)
        return self._call(self.housekeeping.Prune, request, timeout=None)


def _capsule_ref(ref: str) -> cpb.CapsuleRef:
    name, _, version = ref.partition("@")   # the daemon validates both halves
    return cpb.CapsuleRef(name=name, version=version)
