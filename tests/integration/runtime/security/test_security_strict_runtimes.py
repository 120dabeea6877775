"""The strict allow-list runs real programs: the filter is installed by Python, which then execs,
exactly as stage two does, so the Python code between install and execve is covered too."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.integration.runtime.security.conftest import Run

FULL = ("--rlimits", "--drop-caps", "--nnp", "--profile")


def _python() -> str:
    return os.path.realpath(sys.executable)


@pytest.mark.parametrize("defences", [("--profile", "strict"), (*FULL, "strict"), (*FULL, "default")])
def test_python_runs(run: Run, defences: tuple[str, ...]) -> None:
    outcome = run(*defences, argv=[_python(), "-c", "print(1)"])
    assert (outcome.returncode, outcome.stdout) == (0, "1\n"), outcome.stderr


def test_python_with_threads_subprocess_and_sockets_runs_under_strict(run: Run) -> None:
    script = (
        "import socket, subprocess, threading\n"
        "t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
        "a, b = socket.socketpair(); a.sendall(b'x'); assert b.recv(1) == b'x'\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); s.close()\n"
        "print(subprocess.run(['echo', 'child'], capture_output=True, text=True, check=True).stdout, end='')\n"
    )
    outcome = run("--profile", "strict", argv=[_python(), "-c", script])
    assert (outcome.returncode, outcome.stdout) == (0, "child\n"), outcome.stderr


def test_shell_pipeline_runs_under_strict(run: Run) -> None:
    outcome = run("--profile", "strict", argv=["/bin/sh", "-c", "ls / | cat"])
    assert outcome.returncode == 0, outcome.stderr
    assert {"usr", "proc", "etc"} <= set(outcome.stdout.split())


def test_dd_runs_under_strict(run: Run) -> None:
    outcome = run("--profile", "strict", argv=["dd", "if=/dev/zero", "of=/dev/null", "count=10"])
    assert outcome.returncode == 0, outcome.stderr
    assert "10+0 records out" in outcome.stderr


def test_coreutils_run_under_strict(run: Run, tmp_path: Path) -> None:
    if shutil.which("cp") is None:
        pytest.skip("coreutils not installed")
    script = (
        f"cd {tmp_path} && echo hello > a && cp a b && cat b && head -c 3 b && echo"
        " && sleep 0.01 && ls -la . > listing && wc -l < listing"
    )
    outcome = run("--profile", "strict", argv=["/bin/sh", "-c", script])
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stdout.splitlines()[:2] == ["hello", "hel"]
    assert (tmp_path / "b").read_text() == "hello\n"


def test_strict_refuses_what_a_shell_would_try_to_escape(run: Run) -> None:
    # unshare(1) succeeds on the host (it is root here) and is refused under the strict filter.
    host = run(argv=["unshare", "--user", "true"])
    assert host.returncode == 0, host.stderr
    confined = run("--profile", "strict", argv=["unshare", "--user", "true"])
    assert confined.returncode != 0
    assert "Operation not permitted" in confined.stderr
