"""Is a resource that is "already there" still good enough to skip the work? (image ADR-006)

Every "already done" decision of a pull, an unpack, a job's root and a capsule import asks
here first. Existence proves nothing: a blob can be truncated or have a byte flipped, a
snapshot's row can outlive its directory. Each check returns ``None`` when the resource
can be reused, or the reason it cannot (which the caller records before redoing the work
or refusing).

Blobs are checked on a policy (``images.verify_policy`` in server.yaml):

* ``size`` (default): present with the size recorded when it was committed; cheap, catches
  truncation and removal;
* ``full``: also re-hashed against its digest; what ``capsa image verify`` always does.

A blob found corrupt is deleted (:meth:`ContentStore.verify` does it), so the redo fetches
it again rather than trusting it a second time.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable

from capsa.errors import ChecksumMismatch, NotFound
from capsa.images.content import ContentStore
from capsa.snapshots import Kind, Snapshotter

__all__ = ["BlobPolicy", "blob_problem", "chain_problem", "snapshot_problem"]


class BlobPolicy(enum.StrEnum):
    SIZE = "size"
    FULL = "full"


def blob_problem(content: ContentStore, digest: str, policy: BlobPolicy = BlobPolicy.SIZE) -> str | None:
    """Why the stored blob ``digest`` cannot be reused, or None when it can."""
    try:
        info = content.info(digest)
    except NotFound:
        return f"blob {digest} is not in the content store"
    try:
        size = os.stat(content.path(info.digest)).st_size
    except FileNotFoundError:
        _forget(content, digest)
        return f"blob {digest} is recorded but its file is gone"
    if size != info.size:
        _forget(content, digest)
        return f"blob {digest} has {size} bytes on disk, {info.size} were committed"
    if policy is BlobPolicy.FULL:
        try:
            content.verify(digest)  # deletes a corrupt blob
        except ChecksumMismatch as exc:
            return exc.message
        except NotFound:
            return f"blob {digest} vanished while it was verified"
    return None


def snapshot_problem(snapshotter: Snapshotter, key: str) -> str | None:
    """Why committed snapshot ``key`` cannot be reused, or None when it can."""
    try:
        info = snapshotter.stat(key)
    except NotFound:
        return f"snapshot {key} does not exist"
    if info.kind is not Kind.COMMITTED:
        return f"snapshot {key} is {info.kind.value}, not committed"
    if not snapshotter.present(key):
        return f"snapshot {key} is recorded as committed but its storage is gone"
    return None


def chain_problem(snapshotter: Snapshotter, chain: Iterable[str]) -> str | None:
    """The first problem of an image's snapshot chain, bottom first."""
    for key in chain:
        problem = snapshot_problem(snapshotter, key)
        if problem is not None:
            return problem
    return None


def _forget(content: ContentStore, digest: str) -> None:
    """A blob whose file is wrong is never trusted again: drop its record and file."""
    try:
        content.delete(digest)
    except NotFound:
        pass
