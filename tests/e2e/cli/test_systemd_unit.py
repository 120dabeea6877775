"""The shipped systemd unit: installable, accepted by systemd-analyze, and saying what capsa needs.

The service is never enabled or started here. The notify protocol itself is exercised against a
test socket in tests/unit/cli/test_readiness.py and with the real daemon in test_first_run.py.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
UNIT = ROOT / "dist" / "systemd" / "capsa.service"
INSTALL = ROOT / "scripts" / "install.sh"


def _service_section(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str   # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read(path)
    return dict(parser["Service"])


def test_the_unit_says_what_capsa_needs() -> None:
    service = _service_section(UNIT)
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["Delegate"] == "yes" and service["KillMode"] == "process"
    assert service["ExecStart"] == "/opt/capsa/venv/bin/capsa daemon --live-restore"
    assert service["OOMPolicy"] == "continue"
    # Options that would give the daemon its own mount namespace or a seccomp filter its jobs inherit.
    for key in ("ProtectSystem", "PrivateTmp", "PrivateDevices", "ProtectControlGroups", "NoNewPrivileges",
                "SystemCallFilter", "RestrictNamespaces", "ProtectHostname"):
        assert key not in service, f"{key}= breaks the daemon or its jobs (see the unit's comments)"
        assert key in UNIT.read_text(), f"the unit should say why {key}= is left out"


@pytest.fixture
def installed_unit(tmp_path: Path) -> Path:
    unit_dir = tmp_path / "units"
    result = subprocess.run([str(INSTALL), "--use-repo-venv", "--unit-dir", str(unit_dir), "--no-reload"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "systemd not reloaded" in result.stdout   # --no-reload: nothing touched the running systemd
    return unit_dir / "capsa.service"


def test_install_points_the_unit_at_the_installed_capsa(installed_unit: Path) -> None:
    capsa = Path(sys.executable).parent / "capsa"
    service = _service_section(installed_unit)
    assert service["ExecStart"] == f"{capsa} daemon --live-restore"
    # Everything but ExecStart is the shipped unit, comments included.
    shipped = UNIT.read_text().splitlines()
    installed = installed_unit.read_text().splitlines()
    assert [a for a, b in zip(shipped, installed, strict=True) if a != b] == [
        "ExecStart=/opt/capsa/venv/bin/capsa daemon --live-restore"]
    assert oct(installed_unit.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in installed_unit.parent.iterdir()) == ["capsa.service"]   # no temp file


def test_install_refuses_unknown_arguments(tmp_path: Path) -> None:
    result = subprocess.run([str(INSTALL), "--unit-dir", str(tmp_path), "--enable"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "unknown argument --enable" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_systemd_analyze_verify_accepts_the_installed_unit(installed_unit: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt package systemd); the unit is checked by parsing only")
    result = subprocess.run([analyze, "verify", str(installed_unit)], capture_output=True, text=True, timeout=120)
    # verify exits 0 on unknown keys or bad values too, and only warns: any output is a finding.
    assert result.returncode == 0 and result.stderr.strip() == "" and result.stdout.strip() == "", result.stderr


def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path, installed_unit: Path) -> None:
    """The check above is not vacuous: a misspelt key in the same unit is reported."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt package systemd)")
    broken = tmp_path / "capsa-broken.service"
    broken.write_text(installed_unit.read_text().replace("KillMode=process", "KillMode=proces"))
    result = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True, timeout=120)
    assert "kill mode" in result.stderr.lower()


@pytest.mark.slow
def test_install_into_its_own_venv_does_not_depend_on_the_checkout(tmp_path: Path) -> None:
    """The default mode (/opt/capsa/venv), into a temporary directory: a regular install, not editable."""
    venv, unit_dir = tmp_path / "venv", tmp_path / "units"
    result = subprocess.run([str(INSTALL), "--venv", str(venv), "--unit-dir", str(unit_dir), "--no-reload"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import capsa; print(capsa.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path).stdout.strip()
    assert where.startswith(str(venv)), where
    assert subprocess.run([str(venv / "bin" / "capsa"), "--help"], capture_output=True, timeout=60).returncode == 0
    assert _service_section(unit_dir / "capsa.service")["ExecStart"] == f"{venv}/bin/capsa daemon --live-restore"
