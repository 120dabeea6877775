"""YAML round trips and private, atomic config writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from capsa.config import (
    ServerConfig,
    dump_yaml,
    load_server_config,
    parse_config,
    save_config,
    write_private_file,
)
from capsa.errors import AlreadyExists
from capsa.pki import create_ca, issue_server_cert


@pytest.fixture(scope="module")
def config() -> ServerConfig:
    ca = create_ca()
    server = issue_server_cert(ca, hosts=["localhost"])
    return ServerConfig.model_validate(
        {
            "listen": "0.0.0.0:7443",
            "tls": {"ca_pem": ca.cert_pem, "cert_pem": server.cert_pem, "key_pem": server.key_pem},
            "home": "/srv/capsa",
            "jobs": {"stop_grace_s": 3, "default_max_pids": 512},
            "fsm": {"queues": {"download": 1}},
            "images": {
                "registries": {"r.example.com:5000": {"username": "u", "password": "p"}},
                "auth_file": "/etc/capsa/auth.json",
                "s3": {"endpoint_url": "http://127.0.0.1:9000", "region": "eu-west-1"},
            },
            "snapshots": {
                "backend": "devmapper",
                "devmapper": {"data_device": "/dev/a", "metadata_device": "/dev/b"},
            },
            "metrics": {"prometheus_listen": "127.0.0.1:9100"},
        }
    )


def test_dump_and_load_round_trip_every_field(tmp_path: Path, config: ServerConfig) -> None:
    path = save_config(tmp_path / "server.yaml", config)
    assert load_server_config(path) == config


def test_pem_text_is_written_as_readable_block_scalars(config: ServerConfig) -> None:
    text = dump_yaml(config)
    assert "ca_pem: |\n    -----BEGIN CERTIFICATE-----\n" in text
    assert "key_pem: |\n    -----BEGIN PRIVATE KEY-----\n" in text
    assert "\\n" not in text
    assert text.index("listen:") < text.index("tls:") < text.index("jobs:")  # declaration order


def test_only_set_leaves_defaults_out(config: ServerConfig) -> None:
    minimal = ServerConfig.model_validate({"tls": config.tls.model_dump()})
    text = dump_yaml(minimal, only_set=True)
    assert "tls:" in text and "jobs:" not in text and "home:" not in text and "listen:" not in text
    assert parse_config(ServerConfig, text).tls == config.tls


def test_private_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = write_private_file(tmp_path / "f.yaml", "secret\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "secret\n"


def test_private_file_refuses_to_overwrite_unless_told(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("mine\n")
    path.chmod(0o644)
    with pytest.raises(AlreadyExists, match="already exists"):
        write_private_file(path, "theirs\n")
    assert path.read_text() == "mine\n"
    write_private_file(path, "theirs\n", overwrite=True)
    assert path.read_text() == "theirs\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.yaml"]  # no temp files left


def test_failed_write_leaves_no_temp_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        write_private_file(path, "\udcff", overwrite=True)  # lone surrogate: not encodable
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.yaml"]
