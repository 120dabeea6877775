"""A daemon configured for the job-feature tests: small upload limits, fast metrics sampling, a short
stop grace, and a Prometheus endpoint on a free 127.0.0.1 port."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from features_limits import UPLOAD_MAX_FILE

from capsa.config import ensure_home, load_server_config
from tests.fixtures.daemon import RunningDaemon, free_port, running_daemon

UPLOAD_MAX_TOTAL = 4 << 20


def configure_home(home: Path, *, port: int, prometheus_port: int) -> None:
    """Bootstrap ``home`` as a first daemon start would, then set the test limits in server.yaml."""
    address = f"127.0.0.1:{port}"
    ensure_home(home, address=address, listen=address)
    path = home / "server.yaml"
    data = yaml.safe_load(path.read_text())
    data.setdefault("jobs", {}).update({
        "stop_grace_s": 2.0,
        "uploads": {"max_file_bytes": UPLOAD_MAX_FILE, "max_total_bytes": UPLOAD_MAX_TOTAL},
    })
    data["metrics"] = {"sample_interval_s": 0.2, "prometheus_listen": f"127.0.0.1:{prometheus_port}"}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    os.chmod(path, 0o600)
    load_server_config(path)   # the edited file must still be valid


@contextlib.contextmanager
def configured_daemon(home: Path) -> Iterator[RunningDaemon]:
    """tests.fixtures.daemon.running_daemon, with the home configured before the first start."""
    prometheus_port = free_port()
    with running_daemon(home, prepare=lambda h, port: configure_home(h, port=port, prometheus_port=prometheus_port)
                        ) as daemon:
        daemon.prometheus_port = prometheus_port  # type: ignore[attr-defined]
        yield daemon


@pytest.fixture(scope="module")
def features_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    with configured_daemon(tmp_path_factory.mktemp("capsa-features") / "home") as daemon:
        yield daemon


@pytest.fixture
def fresh_features_daemon(tmp_path: Path) -> Iterator[RunningDaemon]:
    """A configured daemon of its own, for tests that kill and restart it."""
    with configured_daemon(tmp_path / "home") as daemon:
        yield daemon
