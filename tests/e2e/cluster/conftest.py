"""Fixtures for the cluster suite: one shared pool per module (3 etcd members, 3 daemons)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_fixture import Pool, running_pool


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (scripts/setup.sh installs etcd-server)")
    root: Path = tmp_path_factory.mktemp("pool")
    with running_pool(root, labels={2: {"disk": "ssd"}}) as p:
        p.start_scheduler("s1")
        p.start_scheduler("s2")
        yield p
