"""Shared fixtures: a real capsa daemon (and its supervisor) per test module, on a free port."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.fixtures.daemon", "tests.fixtures.servers", "tests.fixtures.images"]


@pytest.fixture(scope="session", autouse=True)
def _no_stray_capsa_cgroups():
    """At the end, remove the empty ``capsa/`` base cgroups that daemons killed by tests (kill -9 of the
    daemon and supervisor) had no chance to remove; job cgroups inside them are never touched."""
    yield
    import contextlib
    import os

    if os.geteuid() == 0:
        from capsa.runtime.cgroups import detect

        with contextlib.suppress(Exception):
            detect().cleanup()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import os

    if os.geteuid() != 0:
        skip = pytest.mark.skip(
            reason="capsa's integration and e2e tests need root (namespaces, cgroups, mounts)"
        )
        for item in items:
            if "/integration/" in str(item.fspath) or "/e2e/" in str(item.fspath):
                item.add_marker(skip)
