"""Queues and in-flight pulls, live, through a real daemon: a pull of an image not stored yet is held
mid-layer by a gating proxy in front of the test registry; GetPipeline, `capsa top --json` and the
overview in the browser show it with its progress and the download queue busy, then show it gone."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from web_helpers import WebProcess, sign_in, wait_for

from capsa.images.oci import ImageConfig
from tests.fixtures.daemon import RunningDaemon
from tests.fixtures.images import Layer, TarBuilder, TestImage, write_oci_layout
from tests.fixtures.servers import RegistryServer

By = pytest.importorskip("selenium.webdriver.common.by", reason="selenium is not installed: pip install -e '.[test]'").By

# The daemon reads registry bodies in 1 MiB chunks: two whole chunks go before the gate, so the pull
# shows bytes done while it is held.
LAYER_BYTES = 3 << 20
FIRST_BYTES = 2 << 20


class GatedProxy:
    """Forwards to the registry; a GET of ``gated`` sends ``FIRST_BYTES`` of the body, then waits for ``gate``."""

    def __init__(self, upstream: str, gated: str) -> None:
        self.gate = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._forward("HEAD")

            def do_GET(self) -> None:
                self._forward("GET")

            def _forward(self, method: str) -> None:
                conn = http.client.HTTPConnection(upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range")}
                conn.request(method, self.path, headers=headers)
                resp = conn.getresponse()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() in ("content-type", "content-length", "docker-content-digest", "content-range",
                                     "docker-distribution-api-version", "accept-ranges"):
                        self.send_header(k, v)
                self.end_headers()
                try:
                    if method == "GET":
                        body = resp.read()
                        if gated in self.path:
                            # Two pieces further apart than the engine's progress interval (0.5 s), so
                            # the run's persisted progress shows bytes before the stall.
                            for piece in (body[:FIRST_BYTES // 2], body[FIRST_BYTES // 2:FIRST_BYTES]):
                                self.wfile.write(piece)
                                self.wfile.flush()
                                time.sleep(0.7)
                            proxy.gate.wait(60)
                            body = body[FIRST_BYTES:]
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                finally:
                    conn.close()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.host = f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def slow_image(registry_server: RegistryServer, tmp_path: Path) -> Iterator[tuple[str, Layer, GatedProxy]]:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.skip("skopeo is not installed (apt-get install skopeo)")
    # Random bytes: a layer no other test stored, so the pull must fetch it through the gate.
    layer = Layer(TarBuilder().file("data.bin", os.urandom(LAYER_BYTES)).build(), compression="none")
    image = TestImage(name="slow", layers=(layer,), config=ImageConfig.model_validate(
        {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]}}))
    write_oci_layout(tmp_path / "layout", {"slow": image})
    subprocess.run([skopeo, "--insecure-policy", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
                    f"oci:{tmp_path / 'layout'}:slow", f"docker://{registry_server.host}/capsa-web/slow:1"],
                   check=True, capture_output=True, timeout=60)
    proxy = GatedProxy(registry_server.host, str(layer.digest))
    try:
        yield f"{proxy.host}/capsa-web/slow:1", layer, proxy
    finally:
        proxy.close()


def _pull(daemon: RunningDaemon, ref: str, errors: list[BaseException]) -> None:
    try:
        with daemon.client(role="maintainer") as client:
            for _ in client.pull_image(ref):
                pass
    except BaseException as exc:   # reported by the test, not lost in the thread
        errors.append(exc)


def test_overview_shows_queues_and_a_pull_in_flight_live(daemon: RunningDaemon, web_reader: WebProcess,
                                                        browser: Any, slow_image: tuple[str, Layer, GatedProxy]) -> None:
    ref, layer, proxy = slow_image
    sign_in(browser, web_reader, "/")
    browser.execute_script("window.__notReloaded = true;")
    errors: list[BaseException] = []
    puller = threading.Thread(target=_pull, args=(daemon, ref, errors), name="slow-pull", daemon=True)
    puller.start()
    try:
        with daemon.client(role="reader") as reader:
            seen: list[Any] = []

            def held() -> Any:
                seen[:] = [reader.pipeline()]
                found = [p for p in seen[0].pulls if p.ref == ref]
                return found[0] if found and found[0].bytes_done > 0 else None
            try:
                pull = wait_for(held, timeout=20, what="the held pull in GetPipeline, with bytes done")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; last: {[list(s.pulls) for s in seen]}; pull errors: {errors}") from None
            assert (pull.state, pull.layers_done, pull.layers_total) == ("running", 0, 1), pull
            assert pull.bytes_total == len(layer.blob) and 0 < pull.bytes_done <= FIRST_BYTES, pull
            assert pull.run_id and pull.started_at_ns <= time.time_ns()
            download = {q.name: q for q in reader.pipeline().queues}["download"]
            assert download.in_flight >= 1 and download.limit >= download.in_flight, download
        top = json.loads(daemon.cli("top", "--json", role="reader", check=True).stdout)
        assert ref in [p["ref"] for p in top["pulls"]] and "download" in [q["name"] for q in top["queues"]]

        row = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f'#pulls tr[data-run="{pull.run_id}"]'),
                       timeout=10, what="the pull's row on the overview, without reload")[0]
        assert ref in row.text and "0/1" in row.find_element(By.CLASS_NAME, "pull-layers").text
        assert int(browser.find_element(By.ID, "q-pulls").text) >= 1
        assert int(browser.find_element(By.CSS_SELECTOR, '#queues tr[data-queue="download"] .q-in-flight').text) >= 1
    finally:
        proxy.gate.set()
    puller.join(30)
    assert not puller.is_alive() and not errors, errors
    wait_for(lambda: not browser.find_elements(By.CSS_SELECTOR, f'#pulls tr[data-run="{pull.run_id}"]'),
             timeout=10, what="the finished pull to leave the overview")
    assert browser.execute_script("return window.__notReloaded === true;"), "the page reloaded instead of updating"
