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
    harness = make_harness(request.param, tmp_path)
    try:
        yield harness
    finally:
        harness.teardown()
        # only under tmp_path: other test processes may mount things meanwhile
        leaked = [e.mount_point for e in mount_entries() if e.mount_point.startswith(str(tmp_path))]
        assert not leaked, f"mounts left behind: {leaked}"
        loops = [f for f in loop_backing_files() if f.startswith(str(tmp_path))]
        assert not loops, f"loop devices left attached to {loops}"


def loop_backing_files() -> list[str]:
    files = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            files.append(backing.read_text().strip())
        except OSError:
            continue  # detached meanwhile
    return files
