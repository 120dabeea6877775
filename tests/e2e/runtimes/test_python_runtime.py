"""The shipped runtimes/python-3.11.yaml, built for real (debootstrap from Debian's mirror) and used.

The build's layers are cached across test runs in /var/cache/capsa-test/runtimes/<spec hash>
(the daemon's build cache, CAPSA_RUNTIME_CACHE), so only the first run on a machine, or the
first after the spec changes, pays for debootstrap and apt (about 2 minutes here); later runs
import the two layers in seconds. Caches of other spec versions are removed.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from capsa.runtimes import host_mirror, load_spec
from tests.fixtures.daemon import running_daemon

REPO = Path(__file__).resolve().parents[3]
SPEC = REPO / "runtimes" / "python-3.11.yaml"
CACHE_ROOT = Path("/var/cache/capsa-test/runtimes")


def _mirror_or_skip(suite: str) -> str:
    if shutil.which("debootstrap", path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
        pytest.skip("debootstrap is not installed on this host (apt-get install debootstrap)")
    mirror = host_mirror(suite)
    url = f"{mirror}/dists/{suite}/InRelease"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15) as resp:
            resp.read(0)
    except (urllib.error.URLError, OSError) as exc:
        pytest.skip(f"Debian's package mirror is not reachable from this machine: HEAD {url}: {exc}")
    return mirror


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_python_runtime_runs_python_and_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(SPEC)
    assert spec.base.debootstrap is not None
    cache = CACHE_ROOT / spec.spec_hash().removeprefix("sha256:")
    if CACHE_ROOT.is_dir():
        for other in CACHE_ROOT.iterdir():
            if other != cache:
                shutil.rmtree(other, ignore_errors=True)
    if not (cache / "keys").is_dir() or len(list((cache / "keys").glob("*.json"))) < 1 + len(spec.steps):
        _mirror_or_skip(spec.base.debootstrap.suite)   # only an uncached build needs the network
    monkeypatch.setenv("CAPSA_RUNTIME_CACHE", str(cache))
    with running_daemon(tmp_path / "home") as daemon:
        built = daemon.cli("runtime", "build", str(SPEC), timeout=1700)
        assert built.returncode == 0, built.stdout.decode()[-3000:] + built.stderr.decode()
        version = daemon.cli("run", "--runtime", "python-3.11", "--", "python3", "-c", "import sys; print(sys.version)")
        assert version.returncode == 0, version.stderr.decode()
        assert version.stdout.decode().startswith("3.11.")
        pip = daemon.cli("run", "--runtime", "python-3.11@1", "--", "pip", "--version")
        assert pip.returncode == 0, pip.stderr.decode()
        assert pip.stdout.decode().startswith("pip ") and "(python 3.11)" in pip.stdout.decode()
        listing = daemon.cli("run", "--runtime", "python-3.11", "--", "/bin/ls", "/usr/bin")
        inside = set(listing.stdout.decode().split())
        assert "python3" in inside and inside != set(os.listdir("/usr/bin"))
        venv = daemon.cli("run", "--runtime", "python-3.11", "--", "/bin/sh", "-c",
                          "python3 -m venv /tmp/v && /tmp/v/bin/python -c 'import sys; print(sys.prefix)'")
        assert venv.returncode == 0 and venv.stdout == b"/tmp/v\n", venv.stderr.decode()
