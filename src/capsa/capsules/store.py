"""The capsule store: immutable, content-addressed capsule versions on disk and in SQLite.

``root/content/sha256/<hex>/`` holds each distinct content once, as a
read-only tree ready to be bind-mounted; ``name@version`` rows in SQLite point
at it. Two names with identical content share one tree (same device and
inode). A version never changes: creating it again with the same content and
dependencies is a no-op, with anything else it is refused.

For the capsule manager (attach/swap/detach), the attachment rows are the
attach-intent leases described in :mod:`capsa.capsules.gc`: call
:meth:`CapsuleStore.record_attach` *before* mounting, :meth:`record_detach`
after unmounting or when the mount failed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from capsa.capsules import gc as _gc
from capsa.capsules._fs import staging_dir
from capsa.capsules.canonical import TreeDigest, tree_digest, write_canonical_tar
from capsa.capsules.importer import CapsuleLimits, import_source
from capsa.capsules.model import MIGRATIONS, Attachment, CapsuleVersion, GcReport, Layout
from capsa.capsules.resolver import resolve as _resolve
from capsa.capsules.versions import (
    check_labels,
    check_name,
    parse_requirement,
    parse_version,
    satisfies,
    version_key,
)
from capsa.errors import (
    AlreadyExists,
    ChecksumMismatch,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from capsa.state.db import Database
from capsa.state.keys import check_request_id

__all__ = ["CapsuleStore"]

# Which version a create with a client request id made, so a retried create returns it instead of
# importing again (recorded in the version's own transaction).
_REQUEST_MIGRATIONS = [
    """
    CREATE TABLE capsule_create_requests (
        request_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
]

_ATTACHMENT_SELECT = (
    "SELECT a.job_id, a.target, a.name, v.version, a.digest, a.attached_at "
    "FROM capsule_attachments a JOIN capsule_versions v "
    "ON v.name = a.name AND v.version_key = a.version_key"
)


class CapsuleStore:
    def __init__(
        self, root: Path, db: Database, *, clock: Callable[[], float] = time.time, limits: CapsuleLimits | None = None
    ) -> None:
        self.layout = Layout(Path(root))
        self.layout.create()
        self.db = db
        self._clock = clock
        self.limits = limits or CapsuleLimits()  # server.yaml capsules.limits; create() may override per call
        db.migrate("capsules", MIGRATIONS)
        db.migrate("capsule_create_requests", _REQUEST_MIGRATIONS)

    # -- create ------------------------------------------------------------------------
    def create(
        self,
        name: str,
        version: str,
        source: Path,
        *,
        deps: Sequence[str] = (),
        labels: dict[str, str] | None = None,
        limits: CapsuleLimits | None = None,
        request_id: str = "",
    ) -> CapsuleVersion:
        """Import ``source`` (a directory or a tar) as ``name@version``.

        With a ``request_id`` already used, the version created then is returned and nothing is imported.
        """
        earlier = self.created_for_request(request_id)
        if earlier is not None:
            return earlier
        check_name(name)
        parsed = parse_version(version)
        requirements = sorted({str(parse_requirement(dep)) for dep in deps})
        if any(parse_requirement(dep).name == name for dep in requirements):
            raise InvalidArgument(f"{name}@{parsed} cannot depend on {name} itself")
        clean_labels = check_labels(labels)
        source = Path(source)
        if not source.exists():
            raise NotFound(f"capsule source {source} does not exist")
        with staging_dir(self.layout.ingest) as staging:
            tree = staging / "tree"
            import_source(source, tree, limits or self.limits)
            digest = tree_digest(tree)
            self._publish(name, str(parsed), requirements, clean_labels, tree, digest, request_id)
        return self.created_for_request(request_id) or self.get(name, str(parsed))

    def created_for_request(self, request_id: str) -> CapsuleVersion | None:
        """The version a create with ``request_id`` made (None for an empty or unseen id)."""
        if not check_request_id(request_id):
            return None
        row = self.db.query_one("SELECT name, version FROM capsule_create_requests WHERE request_id = ?",
                                (request_id,))
        return None if row is None else self.get(row["name"], row["version"])

    def _publish(
        self, name: str, version: str, deps: list[str], labels: dict[str, str], tree: Path, digest: TreeDigest,
        request_id: str = "",
    ) -> None:
        key = version_key(version)
        # db.write: retried whole while the disk is full (a retry after a failed commit finds the
        # content already renamed into place and only inserts the row).
        self.db.write(lambda conn: self._publish_tx(conn, name, version, key, deps, labels, tree, digest, request_id))

    def _publish_tx(
        self, conn: sqlite3.Connection, name: str, version: str, key: str, deps: list[str],
        labels: dict[str, str], tree: Path, digest: TreeDigest, request_id: str = "",
    ) -> None:
        if request_id:   # with the version, in its transaction: a retry finds exactly what this made
            conn.execute("INSERT OR IGNORE INTO capsule_create_requests(request_id, name, version, created_at)"
                         " VALUES(?,?,?,?)", (request_id, name, version, self._clock()))
        row = conn.execute(
            "SELECT * FROM capsule_versions WHERE name = ? AND version_key = ?", (name, key)
        ).fetchone()
        if row is not None:
            existing = CapsuleVersion.from_row(row, self.layout)
            if existing.digest != digest.digest:
                raise AlreadyExists(
                    f"{existing.ref} already exists with different content ({existing.digest}, the new "
                    f"content is {digest.digest}); versions are immutable — create a new version"
                )
            if list(existing.deps) != deps:
                raise AlreadyExists(
                    f"{existing.ref} already exists with dependencies {list(existing.deps)} "
                    f"(asked for {deps}); versions are immutable — create a new version"
                )
            return
        now = self._clock()
        conn.execute(
            "INSERT INTO capsule_versions (name, version, version_key, digest, size, entries, deps, "
            "labels, pinned, created_at, last_used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
            (
                name,
                version,
                key,
                digest.digest,
                digest.size,
                digest.entries,
                json.dumps(deps),
                json.dumps(labels, sort_keys=True),
                now,
                now,
            ),
        )
        content = self.layout.content_dir(digest.digest)
        if not content.exists():
            # Inside the transaction: gc's "is anything using this digest" check
            # cannot run between the row insert and the publication.
            _move_read_only_dir(tree, content)

    # -- queries -------------------------------------------------------------------------
    def get(self, name: str, version: str) -> CapsuleVersion:
        row = self.db.query_one(
            "SELECT * FROM capsule_versions WHERE name = ? AND version_key = ?",
            (check_name(name), version_key(version)),
        )
        if row is None:
            raise NotFound(f"capsule {name}@{version} not found")
        return CapsuleVersion.from_row(row, self.layout)

    def list(self, name: str | None = None) -> list[CapsuleVersion]:
        """All versions (of ``name``), by name then PEP 440 order."""
        if name is None:
            rows = self.db.query("SELECT * FROM capsule_versions")
        else:
            rows = self.db.query("SELECT * FROM capsule_versions WHERE name = ?", (check_name(name),))
        versions = [CapsuleVersion.from_row(row, self.layout) for row in rows]
        return sorted(versions, key=lambda v: (v.name, v.parsed_version))

    def _load(self, conn: sqlite3.Connection) -> list[CapsuleVersion]:
        rows = conn.execute("SELECT * FROM capsule_versions").fetchall()
        return [CapsuleVersion.from_row(row, self.layout) for row in rows]

    def resolve(self, requirements: Sequence[str]) -> list[CapsuleVersion]:
        """One version per capsule satisfying ``requirements`` and all their dependencies."""
        return _resolve(self.list(), requirements)

    # -- removal -------------------------------------------------------------------------
    def remove(self, name: str, version: str) -> None:
        """Remove a version; refused while attached, pinned, or the last one a kept version needs.

        The row delete is retried while the disk is full (``Database.write``), so removing
        capsules is a way to free space on a full disk.
        """
        target = self.db.write(lambda conn: self._rm_tx(conn, name, version))
        with self.layout.exclusive():
            _gc.collect_content(self.db, self.layout, only=[target.digest])

    def _rm_tx(self, conn: sqlite3.Connection, name: str, version: str) -> CapsuleVersion:
        target = self.get(name, version)
        users = conn.execute(
            "SELECT job_id, target FROM capsule_attachments WHERE name = ? AND version_key = ?",
            target.key,
        ).fetchall()
        if users:
            where = ", ".join(f"job {row['job_id']} at {row['target']}" for row in users)
            raise Conflict(f"{target.ref} is attached to {where}; detach it first")
        if target.pinned:
            raise Conflict(f"{target.ref} is pinned; unpin it first")
        blocker = self._sole_provider_for(self._load(conn), target)
        if blocker is not None:
            holder, requirement = blocker
            raise Conflict(
                f"{holder.ref} requires '{requirement}' and {target.ref} is the only version that "
                f"satisfies it; remove {holder.ref} first"
            )
        conn.execute("DELETE FROM capsule_versions WHERE name = ? AND version_key = ?", target.key)
        return target

    @staticmethod
    def _sole_provider_for(
        versions: list[CapsuleVersion], target: CapsuleVersion
    ) -> tuple[CapsuleVersion, str] | None:
        siblings = [v for v in versions if v.name == target.name and v.key != target.key]
        for holder in versions:
            if holder.key == target.key:
                continue
            for text in holder.deps:
                req = parse_requirement(text)
                if req.name != target.name or not satisfies(req, target.version):
                    continue
                if not any(satisfies(req, other.version) for other in siblings):
                    return holder, text
        return None

    def pin(self, name: str, version: str) -> None:
        """Keep this version through ``gc(unused=True)``."""
        self._set_pinned(name, version, True)

    def unpin(self, name: str, version: str) -> None:
        self._set_pinned(name, version, False)

    def _set_pinned(self, name: str, version: str, pinned: bool) -> None:
        with self.db.tx() as conn:
            found = conn.execute(
                "UPDATE capsule_versions SET pinned = ? WHERE name = ? AND version_key = ?",
                (int(pinned), check_name(name), version_key(version)),
            ).rowcount
        if not found:
            raise NotFound(f"capsule {name}@{version} not found")

    def gc(
        self, *, unused: bool = False, older_than: timedelta | None = None, dry_run: bool = False
    ) -> GcReport:
        """Remove unreferenced content; with ``unused``, also unused versions (see capsa.capsules.gc)."""
        return _gc.collect(
            self.db,
            self.layout,
            self._load,
            self._clock(),
            unused=unused,
            older_than=older_than,
            dry_run=dry_run,
        )

    # -- attachments (the leases gc respects) --------------------------------------------
    def record_attach(self, job_id: str, name: str, version: str, target: str) -> Attachment:
        """Record that ``name@version`` is being mounted at ``target`` in ``job_id``. Call BEFORE mounting."""
        if not job_id or not target.startswith("/"):
            raise InvalidArgument("record_attach needs a job id and an absolute target path")
        key = version_key(version)
        with self.db.tx() as conn:
            row = conn.execute(
                "SELECT * FROM capsule_versions WHERE name = ? AND version_key = ?", (check_name(name), key)
            ).fetchone()
            if row is None:
                raise NotFound(
                    f"capsule {name}@{version} does not exist (or was just removed); nothing attached"
                )
            found = CapsuleVersion.from_row(row, self.layout)
            if not found.path.is_dir():
                raise FailedPrecondition(f"content of {found.ref} ({found.digest}) is missing from the store")
            now = self._clock()
            conn.execute(
                "INSERT INTO capsule_attachments (job_id, target, name, version_key, digest, attached_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, target, name, version_key) "
                "DO UPDATE SET attached_at = excluded.attached_at",
                (job_id, target, name, key, found.digest, now),
            )
            conn.execute(
                "UPDATE capsule_versions SET last_used_at = ? WHERE name = ? AND version_key = ?",
                (now, name, key),
            )
        return Attachment(job_id, name, found.version, found.digest, target, datetime.fromtimestamp(now, UTC))

    def record_detach(self, job_id: str, target: str, *, version: str | None = None) -> int:
        """Forget the attachment(s) at ``target`` (only ``version`` when given, e.g. after a swap)."""
        now = self._clock()
        where, params = "job_id = ? AND target = ?", [job_id, target]
        if version is not None:
            where += " AND version_key = ?"
            params.append(version_key(version))
        with self.db.tx() as conn:
            keys = conn.execute(
                f"SELECT name, version_key FROM capsule_attachments WHERE {where}", params
            ).fetchall()
            conn.execute(f"DELETE FROM capsule_attachments WHERE {where}", params)
            conn.executemany(
                "UPDATE capsule_versions SET last_used_at = ? WHERE name = ? AND version_key = ?",
                [(now, row["name"], row["version_key"]) for row in keys],
            )
        return len(keys)

    def attachments(self, job_id: str | None = None) -> list[Attachment]:
        if job_id is None:
            rows = self.db.query(_ATTACHMENT_SELECT + " ORDER BY a.job_id, a.target")
        else:
            rows = self.db.query(_ATTACHMENT_SELECT + " WHERE a.job_id = ? ORDER BY a.target", (job_id,))
        return [Attachment.from_row(row) for row in rows]

    # -- content -------------------------------------------------------------------------
    def export_tar(self, name: str, version: str, out: BinaryIO) -> str:
        """Write the canonical tar of a version (what push sends); returns its digest."""
        found = self.get(name, version)
        written = write_canonical_tar(found.path, out)
        if written.digest != found.digest:
            raise ChecksumMismatch(
                f"{found.ref}: stored content hashes to {written.digest}, not {found.digest}"
            )
        return written.digest

    def verify(self, name: str, version: str) -> None:
        """Recompute the digest of the stored tree; ``ChecksumMismatch`` if it changed."""
        found = self.get(name, version)
        actual = tree_digest(found.path)
        if actual.digest != found.digest:
            raise ChecksumMismatch(
                f"{found.ref}: stored content hashes to {actual.digest}, not {found.digest}"
            )


def _move_read_only_dir(source: Path, dest: Path) -> None:
    """rename(2) a read-only directory to another parent: the kernel rewrites its '..' entry, which
    needs write permission on it unless the caller is root; it is read-only again once moved."""
    mode = stat.S_IMODE(os.lstat(source).st_mode)
    if os.geteuid() != 0 and not mode & stat.S_IWUSR:
        os.chmod(source, mode | stat.S_IWUSR)
        os.rename(source, dest)
        os.chmod(dest, mode)
        return
    os.rename(source, dest)
