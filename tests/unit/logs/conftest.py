from __future__ import annotations

from collections.abc import Iterator

import pytest

from capsa.logs import LogPersister


@pytest.fixture
def persister() -> Iterator[LogPersister]:
    """A persister with small segments so a few KiB of output already crosses segment boundaries."""
    p = LogPersister(segment_bytes=4096, fsync_on_close=False)
    yield p
    p.close(timeout=10)
