"""Resource capsules: immutable, versioned, content-addressed bundles of files.

The store (:class:`CapsuleStore`) imports a directory or tar into a version
named ``name@version`` (PEP 440) and identified by the sha256 of a canonical
tar; it resolves dependency sets, tracks attachments, and garbage-collects.
Mounting into jobs lives in :mod:`capsa.runtime.mounts`; the manager that ties
the two together, the API and the CLI live elsewhere.
"""

from capsa.capsules.canonical import TreeDigest, tree_digest, write_canonical_tar
from capsa.capsules.limits import CapsuleLimits
from capsa.capsules.model import Attachment, CapsuleVersion, GcReport
from capsa.capsules.store import CapsuleStore
from capsa.capsules.versions import parse_reference, parse_requirement, parse_version, satisfies

__all__ = [
    "Attachment",
    "CapsuleLimits",
    "CapsuleStore",
    "CapsuleVersion",
    "GcReport",
    "TreeDigest",
    "parse_reference",
    "parse_requirement",
    "parse_version",
    "satisfies",
    "tree_digest",
    "write_canonical_tar",
]
