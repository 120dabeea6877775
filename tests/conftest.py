"""Shared fixtures: a real capsa daemon (and its supervisor) per test module, on a free port."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.fixtures.daemon", "tests.fixtures.servers", "tests.fixtures.images"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import os

    if os.geteuid() != 0:
        skip = pytest.mark.skip(
            reason="capsa's integration and e2e tests need root (namespaces, cgroups, mounts)"
        )
        for item in items:
            if "/integration/" in str(item.fspath) or "/e2e/" in str(item.fspath):
                item.add_marker(skip)
