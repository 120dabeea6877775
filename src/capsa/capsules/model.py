"""Capsule records, their SQLite schema and the on-disk layout of the store."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from packaging.version import Version

from capsa.capsules.versions import version_key

__all__ = ["Attachment", "CapsuleVersion", "GcReport", "Layout", "MIGRATIONS"]

MIGRATIONS = [
    """
    CREATE TABLE capsule_versions (
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        version_key TEXT NOT NULL,
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        entries INTEGER NOT NULL,
        deps TEXT NOT NULL,
        labels TEXT NOT NULL,
        pinned INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        last_used_at REAL NOT NULL,
        PRIMARY KEY (name, version_key)
    );
    CREATE INDEX capsule_versions_by_digest ON capsule_versions(digest);
    CREATE TABLE capsule_attachments (
        job_id TEXT NOT NULL,
        target TEXT NOT NULL,
        name TEXT NOT NULL,
        version_key TEXT NOT NULL,
        digest TEXT NOT NULL,
        attached_at REAL NOT NULL,
        PRIMARY KEY (job_id, target, name, version_key),
        FOREIGN KEY (name, version_key) REFERENCES capsule_versions(name, version_key)
            ON DELETE RESTRICT
    );
    CREATE INDEX capsule_attachments_by_version ON capsule_attachments(name, version_key);
    CREATE INDEX capsule_attachments_by_digest ON capsule_attachments(digest);
    """,
]


def _time(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


@dataclass(frozen=True)
class CapsuleVersion:
    """One immutable version. Identity is ``(name, version, digest)``; the rest is metadata."""

    name: str
    version: str
    digest: str
    size: int = field(compare=False)
    entries: int = field(compare=False)
    deps: tuple[str, ...] = field(compare=False)
    labels: dict[str, str] = field(compare=False, hash=False)
    pinned: bool = field(compare=False)
    created_at: datetime = field(compare=False)
    last_used_at: datetime = field(compare=False)
    path: Path = field(compare=False)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def parsed_version(self) -> Version:
        return Version(self.version)

    @property
    def key(self) -> tuple[str, str]:
        return self.name, version_key(self.version)

    @classmethod
    def from_row(cls, row: sqlite3.Row, layout: Layout) -> CapsuleVersion:
        return cls(
            name=row["name"],
            version=row["version"],
            digest=row["digest"],
            size=row["size"],
            entries=row["entries"],
            deps=tuple(json.loads(row["deps"])),
            labels=dict(json.loads(row["labels"])),
            pinned=bool(row["pinned"]),
            created_at=_time(row["created_at"]),
            last_used_at=_time(row["last_used_at"]),
            path=layout.content_dir(row["digest"]),
        )


@dataclass(frozen=True)
class Attachment:
    """A capsule version mounted (or about to be mounted) into a job."""

    job_id: str
    name: str
    version: str
    digest: str
    target: str
    attached_at: datetime

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Attachment:
        return cls(
            job_id=row["job_id"],
            name=row["name"],
            version=row["version"],
            digest=row["digest"],
            target=row["target"],
            attached_at=_time(row["attached_at"]),
        )


@dataclass(frozen=True)
class GcReport:
    removed_versions: tuple[str, ...]  # name@version
    removed_content: tuple[str, ...]  # sha256:<hex>
    bytes_freed: int
    dry_run: bool


@dataclass(frozen=True)
class Layout:
    """``root/content/sha256/<hex>/`` trees, ``root/ingest`` staging, ``root/trash``."""

    root: Path

    @property
    def content_root(self) -> Path:
        return self.root / "content" / "sha256"

    @property
    def ingest(self) -> Path:
        return self.root / "ingest"

    @property
    def trash(self) -> Path:
        return self.root / "trash"

    def create(self) -> None:
        for path in (self.content_root, self.ingest, self.trash):
            path.mkdir(parents=True, exist_ok=True)

    def content_dir(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        if (
            algorithm != "sha256"
            or len(hexdigest) != 64
            or not all(c in "0123456789abcdef" for c in hexdigest)
        ):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.content_root / hexdigest

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Serialise content removal (gc, rm) between threads and processes."""
        fd = os.open(self.root / "gc.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
