"""The daemon's configuration (server.yaml): typed, defaulted, strict about unknown keys."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ByteSize, Field, ValidationInfo, field_validator, model_validator

from capsa.config.fields import CaCertPem, CertPem, KeyPem, ListenAddress, StrictModel, key_belongs_to
from capsa.config.paths import capsa_home

__all__ = [
    "ApiConfig",
    "BtrfsConfig",
    "ClusterConfig",
    "ClusterTLS",
    "DEFAULT_QUEUES",
    "DevmapperConfig",
    "FsmConfig",
    "ImagesConfig",
    "JobsConfig",
    "MetricsConfig",
    "RegistryConfig",
    "S3Config",
    "ServerConfig",
    "ServerTLS",
    "SnapshotsConfig",
    "UnpackLimits",
    "UploadLimitsConfig",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

PositiveBytes = Annotated[ByteSize, Field(gt=0)]  # ints, or strings such as "512MiB" / "10GiB"
PositiveSeconds = Annotated[float, Field(gt=0)]

DEFAULT_QUEUES: dict[str, int] = {"download": 5, "unpack": 2}
_QUEUE_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


class ServerTLS(StrictModel):
    """The daemon's mTLS material, embedded as PEM text (joblet ADR-006).

    ``ca_pem`` is the CA that client certificates must chain to.
    """

    ca_pem: CaCertPem
    cert_pem: CertPem
    key_pem: KeyPem

    @field_validator("key_pem")
    @classmethod
    def _key_matches_cert(cls, value: str, info: ValidationInfo) -> str:
        return key_belongs_to(info.data.get("cert_pem"), value)


class UploadLimitsConfig(StrictModel):
    """Limits on one upload session; exceeding one refuses the upload and removes what was staged."""

    max_file_bytes: PositiveBytes = ByteSize(1 * GiB)
    max_total_bytes: PositiveBytes = ByteSize(4 * GiB)
    max_entries: Annotated[int, Field(gt=0)] = 100_000
    session_ttl_s: PositiveSeconds = 3600.0
    """A staged upload no RunJob claimed within this time is removed."""


class JobsConfig(StrictModel):
    stop_grace_s: PositiveSeconds = 10.0
    """Seconds between SIGTERM and SIGKILL when a job is stopped."""
    default_max_pids: Annotated[int, Field(gt=0)] | None = None
    """pids limit for jobs that set none; None leaves them unlimited."""
    log_segment_bytes: Annotated[ByteSize, Field(ge=64 * KiB)] = ByteSize(64 * MiB)
    """Size at which a job's log file rolls over to a new segment."""
    uploads: UploadLimitsConfig = Field(default_factory=lambda: UploadLimitsConfig())
    """Limits on ``capsa run --upload`` (see docs/jobs.md)."""


class FsmConfig(StrictModel):
    retry_base_s: PositiveSeconds = 0.5
    """First retry delay; doubles per attempt (with jitter) up to ``retry_cap_s``."""
    retry_cap_s: PositiveSeconds = 60.0
    max_attempts: Annotated[int, Field(ge=1)] = 8
    queues: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: dict(DEFAULT_QUEUES))
    """Concurrency per named queue; setting one queue keeps the defaults of the others."""

    @field_validator("queues", mode="after")
    @classmethod
    def _merge_queue_defaults(cls, value: dict[str, int]) -> dict[str, int]:
        for name in value:
            if not _QUEUE_NAME.match(name):
                raise ValueError(f"queue name {name!r} must be lowercase letters, digits, '_' or '-'")
        return {**DEFAULT_QUEUES, **value}

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> FsmConfig:
        if self.retry_cap_s < self.retry_base_s:
            raise ValueError(
                f"retry_cap_s ({self.retry_cap_s}) must not be smaller than retry_base_s ({self.retry_base_s})"
            )
        return self


class UnpackLimits(StrictModel):
    """Hard limits on one image unpack; exceeding any aborts it (not retried)."""

    max_file_bytes: PositiveBytes = ByteSize(1 * GiB)
    max_total_bytes: PositiveBytes = ByteSize(10 * GiB)
    max_entries: Annotated[int, Field(gt=0)] = 100_000
    timeout_s: PositiveSeconds = 1800.0
    """Extraction limit per image, across all its layers (image ADR-005: 30 minutes): one clock
    starts when the image's first layer starts to unpack and keeps running through its other
    layers, retries and daemon restarts; passing it refuses the image."""

    @model_validator(mode="after")
    def _file_within_total(self) -> UnpackLimits:
        if self.max_file_bytes > self.max_total_bytes:
            raise ValueError(
                f"max_file_bytes ({self.max_file_bytes}) must not exceed max_total_bytes ({self.max_total_bytes})"
            )
        return self


class RegistryConfig(StrictModel):
    """Per-registry settings, keyed by host[:port] as it appears in image references."""

    insecure: bool = False
    """Speak plain HTTP (or HTTPS without verification) to this registry."""
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    token: str | None = Field(default=None, repr=False)
    """A bearer/identity token, used instead of username and password."""

    @model_validator(mode="after")
    def _one_way_to_log_in(self) -> RegistryConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password must be given together")
        if self.token is not None and self.username is not None:
            raise ValueError("give either token or username/password, not both")
        return self


class S3Config(StrictModel):
    endpoint_url: str | None = None
    """A non-AWS endpoint (e.g. http://127.0.0.1:9000); None uses AWS."""
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = Field(default=None, repr=False)

    @field_validator("endpoint_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"endpoint_url {value!r} must start with http:// or https:// and name a host")
        return value

    @model_validator(mode="after")
    def _keys_together(self) -> S3Config:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key must be given together")
        return self


class ImagesConfig(StrictModel):
    unpack: UnpackLimits = Field(default_factory=UnpackLimits)
    download_timeout_s: PositiveSeconds = 300.0
    """A blob download fails after this long without a byte (a stall; image ADR-005: 5 minutes).
    The clock is not restarted by retries of the same download; a download that makes progress
    is never cut by it."""
    download_deadline_s: PositiveSeconds = 3600.0
    """Separate total deadline per image: every blob of one pull must be stored within this long
    of the pull's start, however steadily bytes arrive."""
    verify_policy: Literal["size", "full"] = "size"
    """How a stored blob is checked before a pull reuses it: ``size`` (present with its committed
    size) or ``full`` (also re-hashed, as ``capsa image verify`` does). Snapshots are always
    checked to be committed with their storage present."""
    pipeline: bool = True
    """Unpack a layer as soon as its blob is stored, while later layers still download."""
    registries: dict[str, RegistryConfig] = Field(default_factory=dict)
    auth_file: Path | None = None
    """A docker/podman style auth.json consulted for registries not configured above."""
    s3: S3Config = Field(default_factory=S3Config)

    @field_validator("registries", mode="after")
    @classmethod
    def _registry_hosts(cls, value: dict[str, RegistryConfig]) -> dict[str, RegistryConfig]:
        for host in value:
            if not host or "://" in host or "/" in host or any(ch.isspace() for ch in host):
                raise ValueError(
                    f"registry key {host!r} must be a bare host[:port] such as 'registry.example.com:5000'"
                )
        return value


class BtrfsConfig(StrictModel):
    image_path: Path | None = None
    """A loop-mounted image file to hold snapshots; None means the snapshots dir is already btrfs."""
    size_bytes: PositiveBytes = ByteSize(10 * GiB)


class DevmapperConfig(StrictModel):
    pool_name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")] = "capsa-thinpool"
    data_device: Path | None = None
    """Block device for pool data; None expects the pool to exist already."""
    metadata_device: Path | None = None
    base_image_size: PositiveBytes = ByteSize(10 * GiB)
    max_device_size: PositiveBytes = ByteSize(100 * GiB)
    """Largest thin device capsa creates (image ADR-005: 100 GB per device)."""

    @model_validator(mode="after")
    def _devices_together(self) -> DevmapperConfig:
        if (self.data_device is None) != (self.metadata_device is None):
            raise ValueError("data_device and metadata_device must be given together")
        return self


class SnapshotsConfig(StrictModel):
    backend: Literal["overlay", "btrfs", "devmapper"] = "overlay"
    btrfs: BtrfsConfig = Field(default_factory=BtrfsConfig)
    devmapper: DevmapperConfig = Field(default_factory=DevmapperConfig)


class BackupConfig(StrictModel):
    """Online copies of the state database (image ADR-001/002), also taken by ``capsa admin backup``."""

    dir: Path | None = None
    """Where scheduled backups go; None (default) takes none (manual backups need no setting)."""
    interval_s: Annotated[float, Field(ge=60)] | None = None
    """Seconds between scheduled backups (needs ``dir``); None takes none."""
    keep: Annotated[int, Field(ge=1)] = 7
    """Scheduled backups kept in ``dir``; older ones are deleted after each new one."""

    @model_validator(mode="after")
    def _schedule_needs_dir(self) -> BackupConfig:
        if self.interval_s is not None and self.dir is None:
            raise ValueError("backup.interval_s needs backup.dir")
        if self.dir is not None and not self.dir.is_absolute():
            raise ValueError(f"backup.dir must be an absolute path, got {str(self.dir)!r}")
        return self


class CapsuleGcConfig(StrictModel):
    """A GC policy run as a ``capsule.gc`` state machine; ``capsa capsule gc`` runs the same by hand."""

    interval_s: Annotated[float, Field(ge=60)] | None = None
    """Seconds between collections; None (default) collects only on request."""
    older_than_s: PositiveSeconds | None = 7 * 86400.0
    """Remove versions unused (not attached, not pinned) for longer than this; pins are always kept."""
    unused: bool = True
    """Also remove unused versions (False: only content no version refers to)."""


class RuntimesConfig(StrictModel):
    cache_dir: Path | None = None
    """A runtime build cache shared across daemons (CI, test homes); None keeps it under home.
    Replaces the CAPSA_RUNTIME_CACHE environment variable, which still wins when set."""


class MetricsConfig(StrictModel):
    prometheus_listen: ListenAddress | None = None
    """host:port for a Prometheus /metrics endpoint; None disables it."""
    sample_interval_s: Annotated[float, Field(ge=0.05)] = 1.0
    """How often every running job's cgroup counters (and the host's) are sampled."""
    history_samples: Annotated[int, Field(ge=1, le=100_000)] = 300
    """Samples kept in memory per running job (the last one is also kept in SQLite)."""


class CapsuleLimitsConfig(StrictModel):
    """Limits on one capsule import (create, upload, pull); defaults mirror images.unpack (docs/capsules.md)."""

    max_file_bytes: PositiveBytes = ByteSize(1 * GiB)
    max_total_bytes: PositiveBytes = ByteSize(10 * GiB)
    max_entries: Annotated[int, Field(gt=0)] = 100_000
    max_path_bytes: Annotated[int, Field(gt=0, le=65536)] = 4096
    max_name_bytes: Annotated[int, Field(gt=0, le=4096)] = 255
    max_depth: Annotated[int, Field(gt=0)] = 256
    max_header_bytes: PositiveBytes = ByteSize(64 * KiB)
    max_expansion_ratio: Annotated[float, Field(gt=0)] = 100.0
    """Archives may expand to at most this many times their own size (decompression bombs) ..."""
    expansion_grace_bytes: PositiveBytes = ByteSize(64 * MiB)
    """... once their files add up to more than this."""

    @model_validator(mode="after")
    def _file_within_total(self) -> CapsuleLimitsConfig:
        if self.max_file_bytes > self.max_total_bytes:
            raise ValueError(
                f"max_file_bytes ({self.max_file_bytes}) must not exceed max_total_bytes ({self.max_total_bytes})"
            )
        return self


class CapsulesConfig(StrictModel):
    limits: CapsuleLimitsConfig = Field(default_factory=CapsuleLimitsConfig)
    gc: CapsuleGcConfig = Field(default_factory=CapsuleGcConfig)


class ApiConfig(StrictModel):
    """Bounds of the gRPC server (docs/adr/0011-api-streams-and-limits.md)."""

    max_streams: Annotated[int, Field(ge=1, le=1_000_000)] = 2048
    """Long-lived calls (log and metrics follows, uploads, pulls, builds) open at once, all clients together."""
    max_streams_per_client: Annotated[int, Field(ge=1, le=1_000_000)] = 256
    """The same, per client certificate common name."""
    unary_threads: Annotated[int, Field(ge=2, le=1024)] = 64
    """Threads running unary calls (and the short blocking steps of streams)."""
    blocking_stream_threads: Annotated[int, Field(ge=1, le=1024)] = 32
    """Threads for streams that must hold one while they work (uploads, image pulls, runtime builds)."""


class ClusterTLS(StrictModel):
    """A client certificate issued by capsa's CA: ``capsa init --pool-node`` writes one for etcd and one
    with the ``node`` role for node-to-node calls (docs/cluster.md)."""

    cert_pem: CertPem
    key_pem: KeyPem

    @field_validator("key_pem")
    @classmethod
    def _key_matches_cert(cls, value: str, info: ValidationInfo) -> str:
        return key_belongs_to(info.data.get("cert_pem"), value)


class ClusterConfig(StrictModel):
    """Membership of a pool of nodes coordinated through etcd (docs/cluster.md, ADR 0012)."""

    etcd: Annotated[list[str], Field(min_length=1)]
    """etcd client URLs, e.g. https://10.0.0.1:2379; every member, so losing one changes nothing."""
    node_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
    advertise: ListenAddress | None = None
    """host:port other nodes dial for this node's API; default: listen."""
    labels: dict[str, str] = Field(default_factory=dict)
    lease_ttl_s: Annotated[int, Field(ge=2, le=300)] = 5
    """A node whose lease is not renewed for this long is LOST and its jobs are placed elsewhere."""
    max_jobs: Annotated[int, Field(ge=0)] = 0
    """Concurrent pool jobs this node accepts; 0 = 4 per CPU."""
    etcd_tls: ClusterTLS | None = None
    """Client certificate for etcd (mutual TLS, CA = tls.ca_pem); None only for plain-HTTP test etcds."""
    node_tls: ClusterTLS | None = None
    """Client certificate with the ``node`` role, for proxying pool calls to the owning node."""

    @field_validator("labels")
    @classmethod
    def _label_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$", key):
                raise ValueError(f"label {key!r}: letters, digits, '_', '.', '-', '/' (at most 63)")
        return value


class ServerConfig(StrictModel):
    listen: ListenAddress = "127.0.0.1:7443"
    tls: ServerTLS
    home: Path = Field(default_factory=capsa_home)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    fsm: FsmConfig = Field(default_factory=FsmConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    snapshots: SnapshotsConfig = Field(default_factory=SnapshotsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    capsules: CapsulesConfig = Field(default_factory=CapsulesConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    backup: BackupConfig = Field(default_factory=BackupConfig)
    runtimes: RuntimesConfig = Field(default_factory=RuntimesConfig)
    cluster: ClusterConfig | None = None
    """Join a pool of nodes through etcd; None = a standalone node."""

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"home must be an absolute path, got {str(value)!r}")
        return value
