"""capsa_home() and HomeLayout: every state path named in one place."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from capsa.config import DEFAULT_HOME, HomeLayout, capsa_home
from capsa.errors import InvalidArgument
from capsa.pki import Role


def test_home_defaults_to_var_lib_capsa(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPSA_HOME", raising=False)
    assert capsa_home() == DEFAULT_HOME == Path("/var/lib/capsa")
    monkeypatch.setenv("CAPSA_HOME", "  ")
    assert capsa_home() == DEFAULT_HOME


def test_home_comes_from_the_environment_made_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CAPSA_HOME", str(tmp_path / "h"))
    assert capsa_home() == tmp_path / "h"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CAPSA_HOME", "rel")
    assert capsa_home() == tmp_path / "rel"


def test_layout_names_every_path_under_home(tmp_path: Path) -> None:
    layout = HomeLayout(tmp_path)
    assert layout.db == tmp_path / "capsa.db"
    assert layout.server_config == tmp_path / "server.yaml"
    assert layout.client_config == tmp_path / "client.yaml"
    assert layout.client_config_for(Role.DEVELOPER) == tmp_path / "client-developer.yaml"
    assert layout.client_config_for("Admin") == tmp_path / "client-admin.yaml"
    assert layout.run == tmp_path / "run"
    assert layout.pid_file == tmp_path / "run" / "capsa.pid"
    assert layout.socket("launcher") == tmp_path / "run" / "launcher.sock"
    assert layout.job_dir("j-1") == tmp_path / "jobs" / "j-1"
    assert layout.job_logs("j-1") == tmp_path / "logs" / "j-1"
    for name in ("content", "snapshots", "capsules", "volumes", "networks", "tmp", "logs", "jobs"):
        assert getattr(layout, name) == tmp_path / name
    assert all(p == tmp_path or p.parent == tmp_path for p in layout.directories())


@pytest.mark.parametrize("bad", ["", "..", ".hidden", "a/b", "../etc", "-rf", "x" * 129, "a b"])
def test_job_ids_cannot_escape_or_hide_in_the_jobs_dir(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidArgument, match="job id"):
        HomeLayout(tmp_path).job_dir(bad)


def test_client_config_for_unknown_role_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="unknown role"):
        HomeLayout(tmp_path).client_config_for("root")


def test_create_dirs_makes_private_dirs_and_is_idempotent(tmp_path: Path) -> None:
    layout = HomeLayout(tmp_path / "home")
    layout.create_dirs()
    layout.create_dirs()
    for path in layout.directories():
        assert path.is_dir()
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
