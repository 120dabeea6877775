"""Fixtures for the disk-full suite: a fresh small filesystem per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.diskfull.loopfs import LoopFs, loop_fs


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[LoopFs]:
    """A 96 MiB ext4 filesystem for one test."""
    with loop_fs(tmp_path, 96) as fs:
        yield fs
