"""Image records: which reference names which manifest, layers and top snapshot.

Several references may name the same image (same manifest digest); the blobs and
snapshots they share are stored once. Jobs that run an image are recorded in
``image_users`` so an image in use is never removed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from capsa.errors import NotFound
from capsa.state import Database

__all__ = ["ImageRecord", "ImageStore"]

MIGRATIONS = [
    """
    CREATE TABLE images (
        ref TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        source TEXT NOT NULL,
        platform TEXT NOT NULL DEFAULT '',
        config_json TEXT NOT NULL,
        layers_json TEXT NOT NULL,
        chain_json TEXT NOT NULL,
        top_snapshot TEXT NOT NULL,
        size INTEGER NOT NULL,
        unpacked_size INTEGER NOT NULL DEFAULT 0,
        created_ns INTEGER NOT NULL
    );
    CREATE INDEX images_digest ON images(digest);
    CREATE TABLE image_users (
        job_id TEXT PRIMARY KEY,
        ref TEXT NOT NULL,
        digest TEXT NOT NULL,
        snapshot TEXT NOT NULL,
        running INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX image_users_digest ON image_users(digest);
    """,
]


@dataclass
class ImageRecord:
    ref: str
    digest: str
    source: str
    config: dict[str, Any]
    layers: list[dict[str, Any]]          # {digest, size, media_type}
    chain: list[str]                      # snapshot keys, bottom first
    top_snapshot: str
    size: int
    created_ns: int
    platform: str = ""
    unpacked_size: int = 0
    users: list[str] = field(default_factory=list)

    @property
    def run_config(self) -> dict[str, Any]:
        """The OCI config's ``config`` object (Entrypoint, Cmd, Env, WorkingDir, User)."""
        inner = self.config.get("config") or {}
        return dict(inner) if isinstance(inner, dict) else {}

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "digest": self.digest, "source": self.source, "platform": self.platform,
                "size": self.size, "unpacked_size": self.unpacked_size, "created_ns": self.created_ns,
                "layers": self.layers, "in_use_by": self.users}


class ImageStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("images", MIGRATIONS)

    def put(self, rec: ImageRecord) -> None:
        self.db.execute(
            "INSERT INTO images(ref, digest, source, platform, config_json, layers_json, chain_json, top_snapshot,"
            " size, unpacked_size, created_ns) VALUES(?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(ref) DO UPDATE SET digest=excluded.digest, source=excluded.source,"
            " platform=excluded.platform, config_json=excluded.config_json, layers_json=excluded.layers_json,"
            " chain_json=excluded.chain_json, top_snapshot=excluded.top_snapshot, size=excluded.size,"
            " unpacked_size=excluded.unpacked_size, created_ns=excluded.created_ns",
            (rec.ref, rec.digest, rec.source, rec.platform, json.dumps(rec.config), json.dumps(rec.layers),
             json.dumps(rec.chain), rec.top_snapshot, rec.size, rec.unpacked_size, rec.created_ns or time.time_ns()),
        )
        from capsa.events import EventLog

        EventLog.of(self.db).safe_record("image", "pulled", rec.ref, attributes={"digest": rec.digest,
                                                                                 "source": rec.source})

    def _from_row(self, row: Any) -> ImageRecord:
        users = [r["job_id"] for r in self.db.query(
            "SELECT job_id FROM image_users WHERE digest = ? AND running = 1", (row["digest"],))]
        return ImageRecord(
            ref=row["ref"], digest=row["digest"], source=row["source"], platform=row["platform"],
            config=json.loads(row["config_json"]), layers=json.loads(row["layers_json"]),
            chain=json.loads(row["chain_json"]), top_snapshot=row["top_snapshot"], size=row["size"],
            unpacked_size=row["unpacked_size"], created_ns=row["created_ns"], users=users,
        )

    def find(self, ref: str) -> ImageRecord | None:
        row = self.db.query_one("SELECT * FROM images WHERE ref = ?", (ref,))
        if row is None and ref.startswith("sha256:"):
            row = self.db.query_one("SELECT * FROM images WHERE digest = ? LIMIT 1", (ref,))
        return self._from_row(row) if row is not None else None

    def get(self, ref: str) -> ImageRecord:
        rec = self.find(ref)
        if rec is None:
            raise NotFound(f"no such image: {ref} (see `capsa image ls`, or pull it first)")
        return rec

    def list(self) -> list[ImageRecord]:
        return [self._from_row(r) for r in self.db.query("SELECT * FROM images ORDER BY created_ns DESC")]

    def delete(self, ref: str) -> None:
        self.db.execute("DELETE FROM images WHERE ref = ?", (ref,))

    def refs_for_digest(self, digest: str) -> list[str]:
        return [r["ref"] for r in self.db.query("SELECT ref FROM images WHERE digest = ?", (digest,))]

    # -- users -------------------------------------------------------------------------------
    def add_user(self, job_id: str, ref: str, digest: str, snapshot: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO image_users(job_id, ref, digest, snapshot, running)"
                        " VALUES(?,?,?,?,1)", (job_id, ref, digest, snapshot))

    def mark_stopped(self, job_id: str) -> None:
        self.db.execute("UPDATE image_users SET running = 0 WHERE job_id = ?", (job_id,))

    def remove_user(self, job_id: str) -> str | None:
        row = self.db.query_one("SELECT snapshot FROM image_users WHERE job_id = ?", (job_id,))
        self.db.execute("DELETE FROM image_users WHERE job_id = ?", (job_id,))
        return str(row["snapshot"]) if row else None

    def users(self, digest: str, *, running_only: bool) -> list[dict[str, Any]]:
        sql = "SELECT * FROM image_users WHERE digest = ?" + (" AND running = 1" if running_only else "")
        return [dict(r) for r in self.db.query(sql, (digest,))]

    def all_users(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.query("SELECT * FROM image_users")]
