"""write_bundle and ensure_home: the first-start certificate bundle, written safely."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from capsa.config import (
    HomeLayout,
    bundle_file_names,
    ensure_home,
    load_client_config,
    load_server_config,
    write_bundle,
)
from capsa.errors import AlreadyExists, InvalidArgument
from capsa.pki import Role, load_certificate, role_from_cert_pem, verify_chain

CLIENT_FILES = [f"client-{r}.yaml" for r in ("admin", "maintainer", "developer", "reader")]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_consistent_bundle(directory: Path) -> None:
    """server.yaml and every client file belong to one CA, each client has its own role."""
    server = load_server_config(directory / "server.yaml")
    verify_chain(server.tls.cert_pem, server.tls.ca_pem)
    for role in Role:
        node = load_client_config(directory / f"client-{role.value}.yaml").select()
        assert node.ca_pem == server.tls.ca_pem
        verify_chain(node.cert_pem, server.tls.ca_pem)
        assert role_from_cert_pem(node.cert_pem) is role


# ---------------------------------------------------------------- write_bundle


def test_bundle_has_server_and_one_client_per_role_all_0600(tmp_path: Path) -> None:
    paths = write_bundle(tmp_path / "b", address="127.0.0.1:7443")
    assert [p.name for p in paths] == ["server.yaml", *CLIENT_FILES]
    assert mode(tmp_path / "b") == 0o700
    for path in paths:
        assert mode(path) == 0o600
    assert_consistent_bundle(tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(bundle_file_names())


def test_bundle_embeds_pem_as_block_scalars(tmp_path: Path) -> None:
    write_bundle(tmp_path, address="127.0.0.1:7443")
    text = (tmp_path / "client-reader.yaml").read_text()
    assert "    ca_pem: |\n      -----BEGIN CERTIFICATE-----" in text
    assert "    key_pem: |\n      -----BEGIN PRIVATE KEY-----" in text


def test_server_cert_covers_the_address_host_and_the_given_hosts(tmp_path: Path) -> None:
    write_bundle(tmp_path, address="node7.example:7443", hosts=["10.0.0.7"], listen="0.0.0.0:7443")
    server = load_server_config(tmp_path / "server.yaml")
    assert server.listen == "0.0.0.0:7443"
    san = load_certificate(server.tls.cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == ["node7.example"]
    assert [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert load_client_config(tmp_path / "client-admin.yaml").select().address == "node7.example:7443"


def test_listen_defaults_to_the_address(tmp_path: Path) -> None:
    write_bundle(tmp_path, address="[::1]:7000")
    assert load_server_config(tmp_path / "server.yaml").listen == "[::1]:7000"


@pytest.mark.parametrize(
    ("address", "dial"), [("0.0.0.0:7443", "127.0.0.1:7443"), ("[::]:7443", "[::1]:7443")]
)
def test_wildcard_address_binds_everywhere_and_clients_dial_loopback(
    tmp_path: Path, address: str, dial: str
) -> None:
    write_bundle(tmp_path, address=address)
    assert load_server_config(tmp_path / "server.yaml").listen == address
    for role in Role:
        assert load_client_config(tmp_path / f"client-{role.value}.yaml").select().address == dial


@pytest.mark.parametrize(
    ("address", "words"), [("127.0.0.1:0", "port 0 picks a random port"), ("nohost", "address:")]
)
def test_bundle_rejects_addresses_clients_cannot_dial(tmp_path: Path, address: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        write_bundle(tmp_path, address=address)
    assert list(tmp_path.iterdir()) == []


def test_bundle_refuses_to_overwrite_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "client-reader.yaml").write_text("mine\n")
    with pytest.raises(AlreadyExists, match=r"client-reader\.yaml"):
        write_bundle(tmp_path, address="127.0.0.1:7443")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["client-reader.yaml"]
    assert (tmp_path / "client-reader.yaml").read_text() == "mine\n"


def test_bundle_overwrite_replaces_every_file_with_a_new_ca(tmp_path: Path) -> None:
    write_bundle(tmp_path, address="127.0.0.1:7443")
    first = load_server_config(tmp_path / "server.yaml").tls.ca_pem
    write_bundle(tmp_path, address="127.0.0.1:7443", overwrite=True)
    assert load_server_config(tmp_path / "server.yaml").tls.ca_pem != first
    assert_consistent_bundle(tmp_path)


# ---------------------------------------------------------------- ensure_home


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_ino) for p in directory.iterdir() if p.is_file()}


def test_first_start_creates_a_private_home_with_bundle_and_dirs(tmp_path: Path) -> None:
    home = tmp_path / "var" / "capsa"
    config = ensure_home(home, address="127.0.0.1:7443")
    layout = HomeLayout(home)
    assert mode(home) == 0o700
    assert config.home == home
    assert config.listen == "127.0.0.1:7443"
    assert_consistent_bundle(home)
    assert layout.client_config.read_bytes() == layout.client_config_for(Role.ADMIN).read_bytes()
    for name in [*bundle_file_names(), "client.yaml"]:
        assert mode(home / name) == 0o600
    assert all(d.is_dir() for d in layout.directories())
    assert not layout.bootstrap_staging.exists()
    assert "home:" not in layout.server_config.read_text()  # the home can be moved


def test_later_starts_reuse_the_bundle_untouched(tmp_path: Path) -> None:
    first = ensure_home(tmp_path / "h", address="127.0.0.1:7443")
    before = snapshot(tmp_path / "h")
    second = ensure_home(tmp_path / "h", address="10.9.9.9:1")  # address only matters the first time
    assert second == first
    assert snapshot(tmp_path / "h") == before


def test_start_refuses_a_home_with_someone_elses_client_config(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    (home / "client.yaml").write_text("mine\n")
    with pytest.raises(AlreadyExists, match=r"no server\.yaml but already holds client configs"):
        ensure_home(home, address="127.0.0.1:7443")
    assert (home / "client.yaml").read_text() == "mine\n"
    assert not (home / "server.yaml").exists()


def test_home_setting_that_contradicts_the_location_is_refused(tmp_path: Path) -> None:
    ensure_home(tmp_path / "h", address="127.0.0.1:7443")
    server_yaml = tmp_path / "h" / "server.yaml"
    server_yaml.write_text(server_yaml.read_text() + f"home: {tmp_path / 'elsewhere'}\n")
    with pytest.raises(InvalidArgument, match="home: the file says"):
        ensure_home(tmp_path / "h", address="127.0.0.1:7443")
    server_yaml.write_text(server_yaml.read_text().replace(str(tmp_path / "elsewhere"), str(tmp_path / "h")))
    assert ensure_home(tmp_path / "h", address="127.0.0.1:7443").home == tmp_path / "h"


class Crash(BaseException):
    """Stands in for the process dying: not an Exception, so nothing handles it."""


def _patch_commit_steps(monkeypatch: pytest.MonkeyPatch, crash_at: int | None) -> list[int]:
    """Count os.link/os.replace calls (each publishes one file); raise Crash at call ``crash_at``."""
    calls = [0]
    for name in ("link", "replace"):
        real: Callable[..., None] = getattr(os, name)

        def step(*args: object, _real: Callable[..., None] = real) -> None:
            calls[0] += 1
            if calls[0] == crash_at:
                raise Crash
            _real(*args)

        monkeypatch.setattr(os, name, step)
    return calls


def test_a_start_killed_at_any_step_never_leaves_a_mismatched_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _patch_commit_steps(monkeypatch, None)
    ensure_home(tmp_path / "probe", address="127.0.0.1:7443")
    monkeypatch.undo()
    steps = calls[0]
    assert steps == 12  # 5 bundle files + client.yaml into staging, 6 moves into home
    for crash_at in range(1, steps + 1):
        home = tmp_path / f"h{crash_at}"
        _patch_commit_steps(monkeypatch, crash_at)
        with pytest.raises(Crash):
            ensure_home(home, address="127.0.0.1:7443")
        monkeypatch.undo()

        # The invariant holds at the crash point ...
        if (home / "server.yaml").exists():
            assert_consistent_bundle(home)
        # ... and the next start completes a consistent bundle.
        ensure_home(home, address="127.0.0.1:7443")
        assert_consistent_bundle(home)
        assert (home / "client.yaml").read_bytes() == (home / "client-admin.yaml").read_bytes()
        assert not HomeLayout(home).bootstrap_staging.exists()


def test_a_start_hard_killed_before_the_commit_recovers(tmp_path: Path) -> None:
    """A real process death (os._exit: no cleanup runs) just before server.yaml is moved in."""
    home = tmp_path / "h"
    script = textwrap.dedent(
        f"""
        import os
        from capsa.config import ensure_home
        real = os.replace
        def dying(src, dst):
            if str(dst).endswith("server.yaml"):
                os._exit(17)
            real(src, dst)
        os.replace = dying
        ensure_home({str(home)!r}, address="127.0.0.1:7443")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == 17, proc.stderr.decode()
    assert not (home / "server.yaml").exists()
    assert (home / "client-admin.yaml").exists()  # stale clients from the dead start ...
    stale = (home / "client-admin.yaml").read_bytes()
    ensure_home(home, address="127.0.0.1:7443")
    assert_consistent_bundle(home)  # ... were replaced by a matching set
    assert (home / "client-admin.yaml").read_bytes() != stale


def test_leftover_staging_after_the_commit_is_cleaned(tmp_path: Path) -> None:
    home = tmp_path / "h"
    ensure_home(home, address="127.0.0.1:7443")
    before = snapshot(home)
    staging = HomeLayout(home).bootstrap_staging
    staging.mkdir()
    (staging / "server.yaml").write_text("half\n")
    ensure_home(home, address="127.0.0.1:7443")
    assert not staging.exists()
    assert snapshot(home) == before
