"""Fixtures for the dashboard's end-to-end tests: one daemon and one ``capsa web`` per role for the suite, one
headless Chromium per module; a screenshot of the page in the test's tmp directory when a browser test fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web_helpers import WebProcess, browser_missing, chromium, web_process

from tests.fixtures.daemon import RunningDaemon, running_daemon


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()   # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="package")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    """One daemon for the whole web suite (overrides the per-module one: the suite must stay under 2 min)."""
    with running_daemon(tmp_path_factory.mktemp("capsa-web") / "home") as d:
        yield d


@pytest.fixture(scope="package")
def web_dev(daemon: RunningDaemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebProcess]:
    with web_process(daemon.home, "developer", tmp_path_factory.mktemp("web-dev")) as web:
        yield web


@pytest.fixture(scope="package")
def web_reader(daemon: RunningDaemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebProcess]:
    with web_process(daemon.home, "reader", tmp_path_factory.mktemp("web-reader")) as web:
        yield web


@pytest.fixture(scope="module")
def _chromium() -> Iterator[Any]:
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    with chromium() as driver:
        yield driver


@pytest.fixture
def browser(_chromium: Any, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """The module's Chromium with every cookie cleared: each test signs in for itself."""
    _chromium.delete_all_cookies()
    yield _chromium
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        shot = tmp_path / "failure.png"
        _chromium.save_screenshot(str(shot))
        (tmp_path / "failure.html").write_text(_chromium.page_source)
        print(f"screenshot of the failing page: {shot}")
    _chromium.get("about:blank")   # closes the page's event streams before the next test
