"""A real ``capsa web`` process and a headless Debian Chromium driven by Selenium, for the web e2e tests
and bench/bench_web.py. Both are started as processes we own and stopped by their own ids."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
_URL = re.compile(r"sign in at (\S+/login\?token=\S+)")
T = TypeVar("T")


def diamond_yaml() -> str:
    """The diamond workflow shown in docs/dashboard.md (its only ``name: diamond`` YAML block)."""
    text = (ROOT / "docs" / "dashboard.md").read_text()
    match = re.search(r"```yaml\n(name: diamond\n.*?)```", text, re.S)
    assert match, "docs/dashboard.md lost its diamond workflow"
    return match.group(1)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} is missing: install Debian's chromium and chromium-driver (scripts/setup.sh does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[test]'"
    return None


def wait_for(predicate: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.1, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class WebProcess:
    """``capsa --config client-ROLE.yaml web --port 0`` of a daemon's home."""

    config: Path
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    base: str = ""
    login_url: str = ""
    _buffer: bytes = field(default=b"", repr=False)

    def start(self, *extra: str, timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "capsa", "--config", str(self.config), "web",
                                      "--port", "0", *extra], env=self.env, stdout=subprocess.PIPE,
                                     stderr=open(self.log, "ab"), stdin=subprocess.DEVNULL,  # noqa: SIM115
                                     start_new_session=True)
        self.login_url = self._next_url(timeout)
        self.base = self.login_url.split("/login", 1)[0]

    def _next_url(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while time.monotonic() < deadline:
            match = _URL.search(self._buffer.decode(errors="replace"))
            if match:
                self._buffer = self._buffer[self._buffer.index(match.group(1).encode()) + len(match.group(1)):]
                return match.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"capsa web exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                self._buffer += os.read(fd, 65536)
        raise RuntimeError(f"capsa web printed no sign-in URL: {self._buffer!r} {self.log.read_text()[-2000:]}")

    def new_login_url(self) -> str:
        """What ``kill -USR1`` prints: a fresh one-time URL."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGUSR1)
        self.login_url = self._next_url(10)
        return self.login_url

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


@contextlib.contextmanager
def web_process(home: Path, role: str, log_dir: Path) -> Iterator[WebProcess]:
    env = dict(os.environ, CAPSA_HOME=str(home))
    env.pop("CAPSA_CONFIG", None)
    web = WebProcess(config=home / f"client-{role}.yaml", env=env, log=log_dir / f"web-{role}.log")
    web.start()
    try:
        yield web
    finally:
        web.stop()


@contextlib.contextmanager
def chromium(download_dir: Path | None = None, width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium (Debian's, with its matching chromedriver); quit (and its processes gone) after."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--disable-extensions", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--force-device-scale-factor=1"):
        options.add_argument(arg)
    if download_dir is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(download_dir)})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=subprocess.DEVNULL)
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()   # ends chromium; chromedriver is then stopped by the Service


def sign_in(driver: Any, web: WebProcess, path: str = "/") -> None:
    """Open a fresh one-time URL (sets the session cookie), then ``path``."""
    driver.get(web.new_login_url())
    cookie = "capsa_session_" + web.base.rsplit(":", 1)[1]
    wait_for(lambda: driver.get_cookie(cookie), timeout=10, what="the session cookie")
    driver.get(web.base + path)
