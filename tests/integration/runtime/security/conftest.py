"""Run ``_probe_child.py`` in a fresh process: defences are only ever applied there, never in pytest."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHILD = Path(__file__).with_name("_probe_child.py")


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        assert self.returncode == 0, f"probe process failed ({self.returncode}): {self.stderr}"
        return json.loads(self.stdout.strip().splitlines()[-1])

    @property
    def ok(self) -> bool:
        return bool(self.result["ok"])

    @property
    def errno(self) -> int | None:
        return self.result.get("errno")

    @property
    def value(self) -> Any:
        assert self.result["ok"], f"probe refused: {self.result}"
        return self.result["value"]


Run = Callable[..., Outcome]


@pytest.fixture
def run() -> Run:
    """``run(*options, probe=..., arg=...)`` or ``run(*options, argv=[...])``."""

    def _run(*options: str, probe: str | None = None, arg: str = "", argv: list[str] | None = None,
             timeout: float = 30.0) -> Outcome:
        cmd = [sys.executable, str(CHILD), *options]
        cmd += ["--exec", *argv] if argv is not None else [str(probe), arg]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        return Outcome(proc.returncode, proc.stdout, proc.stderr)

    return _run
