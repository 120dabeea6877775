"""ClientConfig: node selection, validation, and where the CLI finds its config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from capsa.config import ClientConfig, find_client_config, load_client_config
from capsa.errors import InvalidArgument, NotFound
from capsa.pki import IssuedCert, Role, create_ca, issue_client_cert


@pytest.fixture(scope="module")
def ca() -> IssuedCert:
    return create_ca()


def node(ca: IssuedCert, role: Role = Role.DEVELOPER, address: str = "127.0.0.1:7443") -> dict[str, str]:
    issued = issue_client_cert(ca, name="u", role=role)
    return {"address": address, "ca_pem": ca.cert_pem, "cert_pem": issued.cert_pem, "key_pem": issued.key_pem}


def write(tmp_path: Path, data: Any, name: str = "client.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_select_uses_named_then_default_then_only_node(ca: IssuedCert) -> None:
    cfg = ClientConfig.model_validate(
        {"nodes": {"a": node(ca, Role.READER), "b": node(ca, Role.ADMIN, "[::1]:9")}, "default_node": "b"}
    )
    assert cfg.select().role is Role.ADMIN
    assert cfg.select("a").role is Role.READER
    only = ClientConfig.model_validate({"nodes": {"solo": node(ca, Role.MAINTAINER)}})
    assert only.select().role is Role.MAINTAINER


def test_select_unknown_node_lists_the_configured_ones(ca: IssuedCert) -> None:
    cfg = ClientConfig.model_validate({"nodes": {"b": node(ca), "a": node(ca)}})
    with pytest.raises(NotFound, match="unknown node 'c'; configured nodes: a, b"):
        cfg.select("c")
    with pytest.raises(InvalidArgument, match="no default_node configured; choose one of: a, b"):
        cfg.select()


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (lambda d, n: d.update(default_node="zz"), "default_node", "'zz' is not one of the nodes: a"),
        (lambda d, n: d.update(nodes={}), "nodes", "at least one node"),
        (lambda d, n: d.update(nodes={"bad name": n}, default_node=None), "nodes", "node name 'bad name'"),
        (lambda d, n: d["nodes"]["a"].update(address="nohost"), "nodes['a'].address", "not host:port"),
        (lambda d, n: d["nodes"]["a"].update(key_pem=n["key_pem"]), "nodes['a'].key_pem", "does not belong"),
        (lambda d, n: d["nodes"]["a"].update(ca_pem=n["cert_pem"]), "nodes['a'].ca_pem", "not a CA"),
        (lambda d, n: d["nodes"]["a"].pop("cert_pem"), "nodes['a'].cert_pem", "required field is missing"),
        (lambda d, n: d["nodes"]["a"].update(adress="x"), "nodes['a'].adress", "did you mean 'address'"),
        (lambda d, n: d.update(default="a"), "default", "did you mean 'default_node'"),
    ],
)
def test_every_client_validation_error_names_file_and_field(
    tmp_path: Path, ca: IssuedCert, mutate: Any, field: str, words: str
) -> None:
    data: dict[str, Any] = {"nodes": {"a": node(ca)}, "default_node": "a"}
    mutate(data, node(ca))
    path = write(tmp_path, data)
    with pytest.raises(InvalidArgument) as info:
        load_client_config(path)
    assert info.value.message.startswith(f"{path}: {field}: "), info.value.message
    assert words in info.value.message


# ---------------------------------------------------------------- find_client_config


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("CAPSA_HOME", str(home))
    monkeypatch.delenv("CAPSA_CONFIG", raising=False)
    paths = {
        "explicit": tmp_path / "explicit.yaml",
        "env": tmp_path / "env.yaml",
        "home": home / "client.yaml",
    }
    for path in paths.values():
        path.write_text("nodes: {}\n")
    return paths


def test_explicit_config_wins_over_env_and_home(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPSA_CONFIG", str(places["env"]))
    assert find_client_config(places["explicit"]) == places["explicit"]


def test_env_config_wins_over_home(places: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSA_CONFIG", str(places["env"]))
    assert find_client_config(None) == places["env"]


def test_home_client_yaml_is_the_last_resort(places: dict[str, Path]) -> None:
    assert find_client_config(None) == places["home"]


def test_nothing_found_names_all_three_places(places: dict[str, Path]) -> None:
    places["home"].unlink()
    with pytest.raises(NotFound) as info:
        find_client_config(None)
    message = info.value.message
    assert "--config: (not given)" in message
    assert "$CAPSA_CONFIG: (not set)" in message
    assert f"$CAPSA_HOME/client.yaml: {places['home']}" in message


def test_a_named_but_missing_config_is_an_error_not_a_fallthrough(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(NotFound, match=r"typo\.yaml \(from --config\) does not exist"):
        find_client_config(tmp_path / "typo.yaml")
    monkeypatch.setenv("CAPSA_CONFIG", str(tmp_path / "gone.yaml"))
    with pytest.raises(NotFound, match=r"gone\.yaml \(from \$CAPSA_CONFIG\) does not exist") as info:
        find_client_config(None)
    assert "3. $CAPSA_HOME/client.yaml" in info.value.message
    with pytest.raises(NotFound, match="is a directory"):
        find_client_config(tmp_path)
