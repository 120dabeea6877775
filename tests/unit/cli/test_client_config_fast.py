"""The CLI's client.yaml path: the YAML fast path agrees with PyYAML, the structural tier defers to the
cryptographic one for its words, and the expiry is read without cryptography."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from capsa.config import load_client_config, mini_yaml, write_bundle
from capsa.config.client import diagnose
from capsa.config.pem import cert_expiry
from capsa.errors import InvalidArgument
from capsa.pki import IssuedCert, Role, create_ca, issue_client_cert
from capsa.pki import cert_expiry as crypto_expiry


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bundle")
    write_bundle(directory, address="127.0.0.1:7443")
    return directory


def test_generated_client_configs_take_the_fast_path_and_equal_pyyaml(bundle: Path) -> None:
    for path in sorted(bundle.glob("*.yaml")):
        text = path.read_text()
        fast = mini_yaml.parse(text)
        assert fast is not mini_yaml.UNSUPPORTED, path.name
        assert fast == yaml.safe_load(text), path.name


ACCEPTED = [
    "", "# only a comment\n", "a: b\n", "a: 127.0.0.1:7443\n", "a: node7.example:7443\n",
    "nodes:\n  x:\n    address: h:1\n  y: {}\ndefault_node: y\n",
    "k: |\n  line one\n\n  line # three\n    indented\nnext: v\n",
    "k: |-\n  no newline\n",
    "k: |\n  a\n\n\n",
    "k:\n",
    "outer:\n  # comment inside\n  inner: x#y\n",
    "k: a-b_c.d/e@f\n", "k: two words\n",
]

REJECTED = [   # each is valid YAML the fast path leaves to PyYAML (or invalid YAML PyYAML words)
    "a: 1\n", "a: yes\n", "a: null\n", "a: 1:30\n", "a: 2026-01-01\n", "a: ~\n", "a: 'quoted'\n",
    "a: [1, 2]\n", "a:\n- x\n", "a: &x v\nb: *x\n", "a: !!str 1\n", "a: b # trailing comment\n",
    "a: x\na: y\n", "a: |+\n  keep\n\n", "a: |2\n   x\n", "a:\n\tb: c\n", "a: v\r\n", "---\na: b\n",
    "  a: b\n c: d\n", "1: x\n", "a: b: c\n", "a: >\n  folded\n", "a: |\n  x\n   \n  y\n", "a: |\n  no final line break",
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_fast_path_results_equal_pyyaml(text: str) -> None:
    fast = mini_yaml.parse(text)
    assert fast is not mini_yaml.UNSUPPORTED
    assert fast == yaml.safe_load(text)


@pytest.mark.parametrize("text", REJECTED)
def test_anything_else_is_left_to_pyyaml(text: str) -> None:
    assert mini_yaml.parse(text) is mini_yaml.UNSUPPORTED


def test_a_config_pyyaml_reads_loads_the_same(bundle: Path, tmp_path: Path) -> None:
    """Quoted and flow-style files (hand-written ones) go through PyYAML and give the same config."""
    data = yaml.safe_load((bundle / "client-reader.yaml").read_text())
    path = tmp_path / "flow.yaml"
    path.write_text(yaml.safe_dump(data, default_style='"'))
    assert mini_yaml.parse(path.read_text()) is mini_yaml.UNSUPPORTED
    assert load_client_config(path) == load_client_config(bundle / "client-reader.yaml")


@pytest.fixture(scope="module")
def ca() -> IssuedCert:
    return create_ca()


def _write(tmp_path: Path, node: dict[str, str]) -> Path:
    path = tmp_path / "client.yaml"
    path.write_text(yaml.safe_dump({"nodes": {"a": node}}))
    return path


def test_without_verify_a_key_of_another_cert_loads_and_diagnose_names_it(tmp_path: Path, ca: IssuedCert) -> None:
    one, two = (issue_client_cert(ca, name=n, role=Role.READER) for n in ("one", "two"))
    path = _write(tmp_path, {"address": "127.0.0.1:1", "ca_pem": ca.cert_pem, "cert_pem": one.cert_pem,
                             "key_pem": two.key_pem})
    assert load_client_config(path, verify=False).select().address == "127.0.0.1:1"
    with pytest.raises(InvalidArgument, match=r"nodes\['a'\]\.key_pem: .*does not belong"):
        load_client_config(path)
    problem = diagnose(path)
    assert problem is not None and "key_pem" in problem.message


def test_structural_failures_are_worded_by_the_full_checks(tmp_path: Path, ca: IssuedCert) -> None:
    issued = issue_client_cert(ca, name="one", role=Role.READER)
    path = _write(tmp_path, {"address": "127.0.0.1:1", "ca_pem": ca.cert_pem, "cert_pem": "garbage",
                             "key_pem": issued.key_pem})
    with pytest.raises(InvalidArgument) as fast:
        load_client_config(path, verify=False)
    with pytest.raises(InvalidArgument) as full:
        load_client_config(path)
    assert fast.value.message == full.value.message
    assert fast.value.message.startswith(f"{path}: nodes['a'].cert_pem: invalid certificate")


def test_expiry_without_cryptography_matches_cryptography(ca: IssuedCert) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    cases = [issue_client_cert(ca, name="n", role=Role.ADMIN),
             issue_client_cert(ca, name="old", role=Role.ADMIN, not_before=now - dt.timedelta(days=9),
                               not_after=now - dt.timedelta(days=1)),
             issue_client_cert(ca, name="far", role=Role.ADMIN, not_before=now,
                               not_after=dt.datetime(2071, 5, 6, 7, 8, 9, tzinfo=dt.UTC))]   # GeneralizedTime
    for issued in cases:
        assert cert_expiry(issued.cert_pem) == crypto_expiry(issued.cert_pem)
    assert cert_expiry(ca.cert_pem) == crypto_expiry(ca.cert_pem)
    with pytest.raises(InvalidArgument):
        cert_expiry("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")  # cryptography's error


def test_randomized_documents_the_fast_path_accepts_equal_pyyaml() -> None:
    """Seeded fuzzing: capsa-style documents, then comments, blank lines and indentation shuffled in.
    Whatever the fast path accepts must be valid YAML with PyYAML's value (it found a chomping bug once)."""
    import random

    from capsa.config.io import _Dumper

    rnd = random.Random(20261206)
    safe = ["a", "127.0.0.1:7443", "node7.example:7443", "x y", "a-b", "a#b", "line1\nline2", "l1\n\nl3\n",
            "x\n  indented\n", "#notcomment\n", "a\n\n\n", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"]
    tricky = ["yes", "1", "1:30", "null", "~", "-a", "a #b", "a: b", "'q'", "*a", "2026-01-01", "", " lead"]
    keys = ["a", "b", "nodes", "default_node", "k.1", "k-2", "1", "true"]

    def doc(depth: int = 0) -> dict[str, object]:
        return {rnd.choice(keys): doc(depth + 1) if depth < 2 and rnd.random() < 0.3 else
                rnd.choice(safe if rnd.random() < 0.8 else tricky) for _ in range(rnd.randint(0, 4))}

    accepted = 0
    for _ in range(2000):
        lines = yaml.dump(doc(), Dumper=_Dumper, sort_keys=False, default_flow_style=False).split("\n")
        for _ in range(rnd.randint(0, 3)):
            i = rnd.randrange(len(lines))
            lines.insert(i, rnd.choice(["# c", "", " " + lines[i], lines[i][1:], lines[i] + " # t"]))
        if rnd.random() < 0.2:
            lines[-1:] = []   # no final line break
        text = "\n".join(lines)
        fast = mini_yaml.parse(text)
        if fast is mini_yaml.UNSUPPORTED:
            continue
        accepted += 1
        assert fast == yaml.safe_load(text), text
    assert accepted > 100   # the comparison ran on many documents, not a handful
