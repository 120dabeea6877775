"""ServerConfig: defaults, and every validation error names its file and field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from capsa.config import DEFAULT_QUEUES, ServerConfig, dump_yaml, load_server_config
from capsa.errors import InvalidArgument, NotFound
from capsa.pki import Role, create_ca, issue_client_cert, issue_server_cert

GiB = 1024**3


@pytest.fixture(scope="module")
def tls() -> dict[str, str]:
    ca = create_ca()
    server = issue_server_cert(ca, hosts=["localhost"])
    return {"ca_pem": ca.cert_pem, "cert_pem": server.cert_pem, "key_pem": server.key_pem}


def write(tmp_path: Path, data: Any, name: str = "server.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_minimal_config_gets_every_default(
    tmp_path: Path, tls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPSA_HOME", str(tmp_path / "h"))
    cfg = load_server_config(write(tmp_path, {"tls": tls}))
    assert cfg.listen == "127.0.0.1:7443"
    assert cfg.home == tmp_path / "h"
    assert cfg.jobs.stop_grace_s == 10 and cfg.jobs.default_max_pids is None
    assert cfg.jobs.log_segment_bytes == 64 * 1024 * 1024
    assert cfg.fsm.queues == {"download": 5, "unpack": 2} == DEFAULT_QUEUES
    assert cfg.fsm.max_attempts >= 1 and cfg.fsm.retry_cap_s >= cfg.fsm.retry_base_s
    limits = cfg.images.unpack
    assert (limits.max_file_bytes, limits.max_total_bytes) == (1 * GiB, 10 * GiB)
    assert (limits.max_entries, limits.timeout_s) == (100_000, 1800)
    assert cfg.images.download_timeout_s == 300
    assert cfg.images.registries == {} and cfg.images.auth_file is None and cfg.images.s3.endpoint_url is None
    assert cfg.snapshots.backend == "overlay"
    assert cfg.metrics.prometheus_listen is None


def test_sizes_accept_units_and_one_queue_keeps_the_other_defaults(
    tmp_path: Path, tls: dict[str, str]
) -> None:
    data = {
        "tls": tls,
        "listen": "[::1]:0",
        "images": {
            "unpack": {"max_file_bytes": "512MiB"},
            "registries": {"r.example.com:5000": {"insecure": True}},
        },
        "fsm": {"queues": {"download": 9, "activate": 1}},
        "snapshots": {"backend": "btrfs", "btrfs": {"image_path": "/srv/capsa.img", "size_bytes": "2GiB"}},
        "metrics": {"prometheus_listen": "127.0.0.1:9100"},
    }
    cfg = load_server_config(write(tmp_path, data))
    assert cfg.images.unpack.max_file_bytes == 512 * 1024 * 1024
    assert cfg.images.registries["r.example.com:5000"].insecure is True
    assert cfg.fsm.queues == {"download": 9, "unpack": 2, "activate": 1}
    assert cfg.snapshots.btrfs.size_bytes == 2 * GiB and cfg.snapshots.btrfs.image_path == Path(
        "/srv/capsa.img"
    )


def test_secrets_stay_out_of_reprs(tls: dict[str, str]) -> None:
    cfg = ServerConfig.model_validate(
        {
            "tls": tls,
            "images": {
                "registries": {"r": {"username": "u", "password": "hunter2"}, "q": {"token": "tok-123"}},
                "s3": {"access_key_id": "AKIA", "secret_access_key": "s3cret"},
            },
        }
    )
    text = repr(cfg)
    for secret in ("PRIVATE KEY", "hunter2", "tok-123", "s3cret"):
        assert secret not in text
    assert "hunter2" in dump_yaml(cfg)  # but they are saved


def _set(data: dict[str, Any], setting: str | tuple[str, ...], value: Any) -> None:
    *parents, last = setting.split(".") if isinstance(setting, str) else setting
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


def _other_key() -> str:
    return issue_client_cert(create_ca(), name="x", role=Role.READER).key_pem


def _leaf_cert() -> str:
    return issue_client_cert(create_ca(), name="x", role=Role.READER).cert_pem


# (setting, value or a function making it, field named in the error, words in the message)
INVALID: list[tuple[str | tuple[str, ...], Any, str, str]] = [
    ("listne", "127.0.0.1:1", "listne", "unknown key (did you mean 'listen'?"),
    ("images.unpack.max_fil_bytes", 1, "images.unpack.max_fil_bytes", "did you mean 'max_file_bytes'"),
    (
        ("images", "registries", "r.example.com", "passwrd"),
        "x",
        "images.registries['r.example.com'].passwrd",
        "unknown key",
    ),
    ("snapshots.devmapper.pool", "x", "snapshots.devmapper.pool", "allowed: pool_name"),
    ("listen", "localhost", "listen", "not host:port"),
    ("listen", "[::1]:99999", "listen", "outside 0-65535"),
    ("listen", "::1:7443", "listen", "brackets"),
    ("metrics.prometheus_listen", "nowhere", "metrics.prometheus_listen", "not host:port"),
    ("home", "relative/dir", "home", "absolute"),
    ("tls.key_pem", _other_key, "tls.key_pem", "does not belong"),
    ("tls.key_pem", "not a key", "tls.key_pem", "invalid private key"),
    ("tls.cert_pem", "not a cert", "tls.cert_pem", "invalid certificate"),
    ("tls.ca_pem", _leaf_cert, "tls.ca_pem", "not a CA certificate"),
    ("tls.ca_pm", "x", "tls.ca_pm", "did you mean 'ca_pem'"),
    ("jobs.stop_grace_s", 0, "jobs.stop_grace_s", "greater than 0"),
    ("jobs.default_max_pids", -1, "jobs.default_max_pids", "greater than 0"),
    ("jobs.log_segment_bytes", "10 bananas", "jobs.log_segment_bytes", "could not interpret byte unit"),
    ("jobs.log_segment_bytes", 100, "jobs.log_segment_bytes", "greater than or equal to 65536"),
    ("fsm.retry_cap_s", 0.1, "fsm", "retry_cap_s (0.1) must not be smaller than retry_base_s"),
    ("fsm.max_attempts", 0, "fsm.max_attempts", "greater than or equal to 1"),
    ("fsm.queues", {"Bad Name": 1}, "fsm.queues", "queue name 'Bad Name'"),
    ("fsm.queues", {"download": 0}, "fsm.queues['download']", "greater than or equal to 1"),
    ("images.unpack.max_file_bytes", "20GiB", "images.unpack", "max_file_bytes"),
    ("images.unpack.max_entries", "many", "images.unpack.max_entries", "valid integer"),
    ("images.download_timeout_s", -1, "images.download_timeout_s", "greater than 0"),
    ("images.registries", {"https://r.example.com": {}}, "images.registries", "bare host[:port]"),
    ("images.registries", {"r": {"username": "u"}}, "images.registries['r']", "username and password"),
    (
        "images.registries",
        {"r": {"token": "t", "username": "u", "password": "p"}},
        "images.registries['r']",
        "either token",
    ),
    ("images.registries", {"r": {"insecure": "maybe"}}, "images.registries['r'].insecure", "valid boolean"),
    ("images.s3.endpoint_url", "ftp://x", "images.s3.endpoint_url", "http:// or https://"),
    ("images.s3.access_key_id", "AKIA", "images.s3", "access_key_id and secret_access_key"),
    ("snapshots.backend", "zfs", "snapshots.backend", "'overlay', 'btrfs' or 'devmapper'"),
    ("snapshots.devmapper.pool_name", "bad name", "snapshots.devmapper.pool_name", "pattern"),
    (
        "snapshots.devmapper.data_device",
        "/dev/loop1",
        "snapshots.devmapper",
        "data_device and metadata_device",
    ),
    ("snapshots.btrfs.size_bytes", 0, "snapshots.btrfs.size_bytes", "greater than 0"),
    ("tls", None, "tls", "valid dictionary"),
]


@pytest.mark.parametrize(("setting", "value", "field", "words"), INVALID, ids=[c[2] for c in INVALID])
def test_every_validation_error_names_file_and_field(
    tmp_path: Path, tls: dict[str, str], setting: str | tuple[str, ...], value: Any, field: str, words: str
) -> None:
    data: dict[str, Any] = {"tls": copy.deepcopy(tls)}
    _set(data, setting, value() if callable(value) else value)
    path = write(tmp_path, data)
    with pytest.raises(InvalidArgument) as info:
        load_server_config(path)
    err = info.value
    assert str(path) in err.message
    assert f": {field}: " in err.message, err.message
    assert words in err.message, err.message
    assert err.detail["path"] == str(path)
    assert [e["field"] for e in err.detail["errors"]] == [field]  # type: ignore[index]


def test_missing_tls_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"server\.yaml: tls: required field is missing"):
        load_server_config(write(tmp_path, {"listen": "127.0.0.1:1"}))


def test_several_errors_are_reported_together(tmp_path: Path, tls: dict[str, str]) -> None:
    path = write(tmp_path, {"tls": tls, "listen": "x", "jobs": {"stop_grace_s": -1}, "bogus": 1})
    with pytest.raises(InvalidArgument) as info:
        load_server_config(path)
    fields = [e["field"] for e in info.value.detail["errors"]]  # type: ignore[union-attr]
    assert sorted(fields) == ["bogus", "jobs.stop_grace_s", "listen"]
    assert "3 errors" in info.value.message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("listen: [unclosed\n", "line 2"),
        ("listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n", "duplicate key 'listen' (first at line 1)"),
        ("- a\n- b\n", "expected a mapping"),
        ("tls: !!python/object:os.system {}\n", "invalid YAML"),
    ],
)
def test_yaml_level_errors_name_the_file(tmp_path: Path, text: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InvalidArgument) as info:
        load_server_config(path)
    assert info.value.message.startswith(str(path)) and words in info.value.message


def test_missing_file_is_not_found_and_a_directory_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        load_server_config(tmp_path / "nope.yaml")
    with pytest.raises(InvalidArgument, match="is a directory"):
        load_server_config(tmp_path)
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InvalidArgument, match="not UTF-8"):
        load_server_config(tmp_path / "bin.yaml")
