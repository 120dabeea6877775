"""Build the image subsystem from the daemon's configuration (config types -> domain types)."""

from __future__ import annotations

from pathlib import Path

from capsa.config import ServerConfig
from capsa.fsm import Engine
from capsa.images.content import ContentStore
from capsa.images.pull import PullContext, PullObserver
from capsa.images.service import ImageService
from capsa.images.sources import Credentials, RegistryConfig, S3Config
from capsa.images.store import ImageStore
from capsa.images.unpack import UnpackLimits
from capsa.images.validity import BlobPolicy
from capsa.snapshots import BtrfsConfig, DevmapperConfig, Snapshotter, open_snapshotter
from capsa.state import Database

__all__ = ["open_image_service", "open_snapshotter_from_config", "registry_config", "s3_config"]


def open_snapshotter_from_config(config: ServerConfig, db: Database, home: Path) -> Snapshotter:
    snaps = config.snapshots
    root = home / "snapshots" / snaps.backend
    if snaps.backend == "btrfs":
        return open_snapshotter("btrfs", root, db, BtrfsConfig(image_path=snaps.btrfs.image_path,
                                                               size_bytes=int(snaps.btrfs.size_bytes)))
    if snaps.backend == "devmapper":
        dm = snaps.devmapper
        return open_snapshotter("devmapper", root, db, DevmapperConfig(
            pool_name=dm.pool_name, base_image_size=int(dm.base_image_size), max_device_size=int(dm.max_device_size),
            data_file=dm.data_device, metadata_file=dm.metadata_device))
    return open_snapshotter("overlay", root, db)


def registry_config(config: ServerConfig) -> RegistryConfig:
    """Credentials and insecure hosts for OCI registries (image pulls, capsule pushes and pulls)."""
    images = config.images
    return RegistryConfig(
        credentials={host: Credentials(username=r.username, password=r.password, registry_token=r.token)
                     for host, r in images.registries.items() if r.username or r.token},
        auth_file=images.auth_file,
        insecure=frozenset(host for host, r in images.registries.items() if r.insecure),
    )


def s3_config(config: ServerConfig) -> S3Config:
    """The S3 endpoint and credentials (server.yaml, then the AWS_* environment)."""
    s3 = config.images.s3
    return S3Config(endpoint_url=s3.endpoint_url, region=s3.region, access_key_id=s3.access_key_id,
                    secret_access_key=s3.secret_access_key).with_env()


def open_image_service(config: ServerConfig, db: Database, engine: Engine, home: Path,
                       snapshotter: Snapshotter, observer: PullObserver | None = None) -> ImageService:
    images = config.images
    limits = UnpackLimits(max_file_bytes=int(images.unpack.max_file_bytes),
                          max_total_bytes=int(images.unpack.max_total_bytes),
                          max_entries=images.unpack.max_entries, timeout_s=images.unpack.timeout_s)
    pc = PullContext(content=ContentStore(home / "content", db), images=ImageStore(db), snapshotter=snapshotter,
                     registry=registry_config(config), s3=s3_config(config), limits=limits,
                     download_timeout_s=images.download_timeout_s, download_deadline_s=images.download_deadline_s,
                     verify_policy=BlobPolicy(images.verify_policy), pipeline=images.pipeline, observer=observer)
    return ImageService(engine, pc)
