"""`capsa init --pool-node ... --etcd ...`: one CA for the whole pool, every certificate where it belongs."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from capsa.cli.main import main
from capsa.config import load_client_config, load_server_config
from capsa.errors import Unauthorized
from capsa.pki import NodeRole, Role, load_certificate, role_from_cert_pem, verify_chain


def _init(tmp_path: Path, *extra: str) -> int:
    return main(["init", "--dir", str(tmp_path / "pool"), "--pool-node", "n0=127.0.0.1:7101,zone=a",
                 "--pool-node", "n1=127.0.0.1:7102", "--etcd", "e0=127.0.0.1:2379:2380",
                 "--etcd", "e1=127.0.0.1:2479:2480", *extra])


def test_init_writes_node_configs_etcd_certificates_and_pool_clients_from_one_ca(tmp_path: Path) -> None:
    assert _init(tmp_path) == 0
    pool = tmp_path / "pool"
    ca = (pool / "ca.pem").read_text()
    n0 = load_server_config(pool / "nodes" / "n0" / "server.yaml")
    assert n0.cluster is not None and n0.cluster.node_name == "n0" and n0.cluster.labels == {"zone": "a"}
    assert n0.cluster.etcd == ["https://127.0.0.1:2379", "https://127.0.0.1:2479"]
    assert n0.listen == "127.0.0.1:7101" and n0.tls.ca_pem == ca
    assert n0.cluster.node_tls is not None and n0.cluster.etcd_tls is not None
    # The node certificate has the node role; the etcd client certificate has no role at all.
    assert role_from_cert_pem(n0.cluster.node_tls.cert_pem) is NodeRole.NODE
    with pytest.raises(Unauthorized):
        role_from_cert_pem(n0.cluster.etcd_tls.cert_pem)
    member_pem = (pool / "etcd" / "e0.pem").read_text()
    usages = load_certificate(member_pem).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    for pem in (member_pem, n0.cluster.node_tls.cert_pem, n0.cluster.etcd_tls.cert_pem, n0.tls.cert_pem):
        verify_chain(pem, ca)   # one CA for etcd, nodes and users
    client = load_client_config(pool / "client-developer.yaml")
    assert sorted(client.nodes) == ["n0", "n1"] and client.default_node == "n0"
    assert client.select("n1").role is Role.DEVELOPER and client.select("n1").address == "127.0.0.1:7102"


def test_init_refuses_to_overwrite_a_pool_bundle_without_force(tmp_path: Path) -> None:
    assert _init(tmp_path) == 0
    assert _init(tmp_path) != 0
    assert _init(tmp_path, "--force") == 0


def test_init_names_a_malformed_etcd_member(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["init", "--dir", str(tmp_path / "p"), "--pool-node", "n0=127.0.0.1:1", "--etcd", "e0=nohost"])
    assert code == 2 and "--etcd 'e0=nohost'" in capsys.readouterr().err
