"""Test modules are imported by basename (pytest's default "prepend" mode, no __init__ packages):
two files with one basename make collection of the whole suite fail, so every name is unique."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_basename_is_unique() -> None:
    names = Counter(p.name for p in TESTS.rglob("*.py")
                    if p.name not in ("__init__.py", "conftest.py") and "__pycache__" not in p.parts)
    assert [name for name, n in names.items() if n > 1] == []
