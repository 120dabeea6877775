"""Checking stored capsule trees against their recorded digests, and where pulled versions came from.

A version's tree is re-hashed with the same canonical digest it was created with
(:func:`capsa.capsules.canonical.tree_digest`); a missing or changed tree is reported, never
used (a pull of a damaged stored version refuses). The ``capsule_sources`` table remembers the
location each version was pulled from, so ``capsa capsule verify --repair`` can fetch it again.
"""

from __future__ import annotations

from dataclasses import dataclass

from capsa.capsules.canonical import tree_digest
from capsa.capsules.model import CapsuleVersion

__all__ = ["SOURCE_MIGRATIONS", "CapsuleReport", "verify_version"]


@dataclass(frozen=True)
class CapsuleReport:
    ref: str
    digest: str
    ok: bool
    problem: str = ""
    entries: int = 0
    repaired: bool = False
    repair_error: str = ""


SOURCE_MIGRATIONS = [
    """
    CREATE TABLE capsule_sources (
      name TEXT NOT NULL,
      version TEXT NOT NULL,
      source TEXT NOT NULL,
      insecure INTEGER NOT NULL DEFAULT 0,
      PRIMARY KEY (name, version)
    );
    """,
]


def verify_version(version: CapsuleVersion) -> CapsuleReport:
    if not version.path.is_dir():
        return CapsuleReport(version.ref, version.digest, False, f"its stored tree {version.path} is gone")
    actual = tree_digest(version.path)
    if actual.digest != version.digest:
        return CapsuleReport(version.ref, version.digest, False,
                             f"its stored tree hashes to {actual.digest}, not {version.digest}", actual.entries)
    return CapsuleReport(version.ref, version.digest, True, "", actual.entries)
