"""The committed generated protobuf code is exactly what scripts/gen_proto.sh makes from the .proto files."""

from __future__ import annotations

import filecmp
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
GEN = ROOT / "src" / "capsa" / "api" / "gen"


def _files(top: Path) -> set[str]:
    return {str(p.relative_to(top)) for p in top.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools (a test dependency) is missing")
def test_generated_code_is_current(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gen_proto.sh"), str(out)],
                         env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    fresh, committed = _files(out), _files(GEN)
    assert fresh == committed, f"only generated: {sorted(fresh - committed)}; only committed: {sorted(committed - fresh)}"
    _, mismatch, errors = filecmp.cmpfiles(out, GEN, sorted(fresh), shallow=False)
    assert not mismatch and not errors, f"stale generated files (run scripts/gen_proto.sh): {mismatch + errors}"
