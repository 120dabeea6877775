"""Garbage collection of capsule versions and content, safe against concurrent attaches.

The protocol that makes "never removes anything in use" hold under races:

* An attach writes its attachment row (:meth:`CapsuleStore.record_attach`)
  *before* mounting, in a write transaction that also checks the version
  still exists. GC decides and deletes versions inside one write transaction
  too. SQLite serialises the two (``BEGIN IMMEDIATE``), so either the attach
  row exists when GC looks (the version is kept), or GC removed the version
  first and the attach fails with ``NotFound`` before anything is mounted.
  The attachments table also has a foreign key with ``ON DELETE RESTRICT``,
  so the database itself refuses to drop an attached version.
* Content directories are removed only inside a write transaction that
  re-checks that no version and no attachment refers to the digest, by an
  atomic rename into ``trash/``; the slow recursive delete happens after the
  commit. Import publishes content by a rename inside its own transaction,
  so it cannot interleave with that check either.

A version is *unused* when it is not attached, not pinned, and (with
``older_than``) its last use — creation, attach or detach — is older than that.
Unused versions that a kept version still needs are kept: for every
requirement of a kept version that no other kept version satisfies, the
highest satisfying candidate is kept (what the resolver would pick), until
nothing changes.
"""

from __future__ import annotations

import os
import re
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from datetime import timedelta

from capsa.capsules._fs import is_stale, remove_tree, tree_bytes
from capsa.capsules.model import CapsuleVersion, GcReport, Layout
from capsa.capsules.versions import parse_requirement, satisfies
from capsa.errors import InvalidArgument
from capsa.state.db import Database

__all__ = ["collect", "collect_content"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def collect(
    db: Database,
    layout: Layout,
    load: Callable[[sqlite3.Connection], list[CapsuleVersion]],
    now: float,
    *,
    unused: bool,
    older_than: timedelta | None,
    dry_run: bool,
) -> GcReport:
    if older_than is not None and not unused:
        raise InvalidArgument("older_than only applies together with unused=True")
    if older_than is not None and older_than < timedelta(0):
        raise InvalidArgument("older_than must not be negative")
    with layout.exclusive():
        doomed: list[CapsuleVersion] = []
        if unused:
            with db.tx() as conn:
                versions = load(conn)
                attached = {
                    (row["name"], row["version_key"])
                    for row in conn.execute("SELECT DISTINCT name, version_key FROM capsule_attachments")
                }
                doomed = _plan_unused(versions, attached, now, older_than)
                if not dry_run:
                    conn.executemany(
                        "DELETE FROM capsule_versions WHERE name = ? AND version_key = ?",
                        [v.key for v in doomed],
                    )
        removed, freed = collect_content(
            db, layout, ignoring={v.key for v in doomed} if dry_run else set(), dry_run=dry_run
        )
        if not dry_run:
            freed += _sweep_leftovers(layout)
    return GcReport(
        removed_versions=tuple(v.ref for v in doomed),
        removed_content=tuple(removed),
        bytes_freed=freed,
        dry_run=dry_run,
    )


def _plan_unused(
    versions: list[CapsuleVersion],
    attached: set[tuple[str, str]],
    now: float,
    older_than: timedelta | None,
) -> list[CapsuleVersion]:
    cutoff = None if older_than is None else now - older_than.total_seconds()
    candidates = {
        v.key: v
        for v in versions
        if not v.pinned and v.key not in attached and (cutoff is None or v.last_used_at.timestamp() <= cutoff)
    }
    kept = [v for v in versions if v.key not in candidates]
    changed = True
    while changed:
        changed = False
        for holder in list(kept):
            for text in holder.deps:
                req = parse_requirement(text)
                if any(v.name == req.name and satisfies(req, v.version) for v in kept):
                    continue
                options = [c for c in candidates.values() if c.name == req.name and satisfies(req, c.version)]
                if options:
                    best = max(options, key=lambda c: c.parsed_version)
                    del candidates[best.key]
                    kept.append(best)
                    changed = True
    return sorted(candidates.values(), key=lambda v: (v.name, v.parsed_version))


def collect_content(
    db: Database,
    layout: Layout,
    *,
    only: Iterable[str] | None = None,
    ignoring: set[tuple[str, str]] | None = None,
    dry_run: bool = False,
) -> tuple[list[str], int]:
    """Remove content directories no version or attachment refers to; (digests, bytes).

    Call with :meth:`Layout.exclusive` held. ``ignoring`` lists versions to
    treat as already gone (a dry run of version removal).
    """
    on_disk = sorted(f"sha256:{p.name}" for p in layout.content_root.iterdir() if _HEX64.match(p.name))
    if only is not None:
        wanted = set(only)
        on_disk = [d for d in on_disk if d in wanted]
    removed: list[str] = []
    freed = 0
    for digest in on_disk:
        path = layout.content_dir(digest)
        with db.tx() as conn:
            users = {
                (row["name"], row["version_key"])
                for row in conn.execute(
                    "SELECT name, version_key FROM capsule_versions WHERE digest = ?", (digest,)
                )
            } - (ignoring or set())
            attached = conn.execute(
                "SELECT 1 FROM capsule_attachments WHERE digest = ? LIMIT 1", (digest,)
            ).fetchone()
            if users or attached:
                continue
            if not dry_run:
                # Only the rename happens under the write lock; sizing and deleting do not.
                path = layout.trash / f"{path.name}.{secrets.token_hex(4)}"
                os.rename(layout.content_dir(digest), path)
        freed += tree_bytes(path)
        if not dry_run:
            remove_tree(path)
        removed.append(digest)
    return removed, freed


def _sweep_leftovers(layout: Layout) -> int:
    """Remove staging dirs of crashed imports and trash of interrupted removals."""
    freed = 0
    for path in list(layout.trash.iterdir()):
        freed += tree_bytes(path)
        remove_tree(path)
    for path in list(layout.ingest.iterdir()):
        if is_stale(path):
            freed += tree_bytes(path)
            remove_tree(path)
    return freed
