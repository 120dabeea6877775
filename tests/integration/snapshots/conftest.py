"""Every available snapshotter backend, on the real kernel, torn down after each test.

``backend`` yields a :class:`Harness` for overlay (always), btrfs (when
mkfs.btrfs and loop devices work) and devmapper (when the kernel has dm-thin;
skipped otherwise with the probe's reason). Each harness owns a fresh
database and root under ``tmp_path``; its finalizer removes every snapshot,
unmounts and detaches whatever the backend set up, and fails the test if a
mount was left behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from snapshots_harness import Harness, make_harness, skip_reason

from capsa.snapshots._fsutil import mount_entries


@pytest.fixture(params=["overlay", "btrfs", "devmapper"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    reason = skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    mounts_before = {e.mount_point for e in mount_entries()}
    harness = make_harness(request.param, tmp_path)
    try:
        yield harness
    finally:
        harness.teardown()
        leaked = {e.mount_point for e in mount_entries()} - mounts_before
        assert not leaked, f"mounts left behind: {leaked}"
