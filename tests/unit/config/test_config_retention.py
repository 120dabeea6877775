"""server.yaml ``retention``: off by default, validated when given."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from capsa.config import load_server_config
from capsa.errors import InvalidArgument
from capsa.pki import create_ca, issue_server_cert


@pytest.fixture(scope="module")
def tls() -> dict[str, str]:
    ca = create_ca()
    server = issue_server_cert(ca, hosts=["localhost"])
    return {"ca_pem": ca.cert_pem, "cert_pem": server.cert_pem, "key_pem": server.key_pem}


def _load(tmp_path: Path, data: dict) -> object:
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_server_config(path)


def test_retention_is_off_by_default_and_read_when_given(tmp_path: Path, tls: dict[str, str]) -> None:
    off = _load(tmp_path, {"tls": tls}).retention   # type: ignore[attr-defined]
    assert off.jobs_older_than_s is None and off.fsm_runs_older_than_s is None and off.interval_s == 3600
    on = _load(tmp_path, {"tls": tls, "retention": {"jobs_older_than_s": 86400, "fsm_runs_older_than_s": 604800,
                                                    "interval_s": 600}}).retention   # type: ignore[attr-defined]
    assert (on.jobs_older_than_s, on.fsm_runs_older_than_s, on.interval_s) == (86400, 604800, 600)


def test_a_bad_retention_names_its_field(tmp_path: Path, tls: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument, match="interval_s"):
        _load(tmp_path, {"tls": tls, "retention": {"interval_s": 0}})
