"""``etcd_url``: a real single-member etcd on loopback (plain HTTP, data in tmp_path) for the cluster unit tests."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsa.cluster.etcd import EtcdClient
from tests.fixtures.daemon import free_port


@pytest.fixture
def etcd_url(tmp_path: Path) -> Iterator[str]:
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (scripts/setup.sh installs etcd-server)")
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    proc = subprocess.Popen(
        ["etcd", "--name", "u0", "--data-dir", str(tmp_path / "etcd"), "--listen-client-urls", url,
         "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"u0=http://127.0.0.1:{peer}", "--listen-metrics-urls", "", "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        probe = EtcdClient([url])
        deadline = time.monotonic() + 15
        while True:
            try:
                probe.put("/probe", "1")
                break
            except Exception:
                assert time.monotonic() < deadline, "etcd did not come up"
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
