"""Images, capsules and TLS through the dashboard against a real daemon (HTTP only, no browser): an image
pulled from an OCI layout shows its layers and pull history; capsules show versions, the dependency
graph and the job they are attached to; ``--tls-dir`` serves HTTPS with a certificate of its own CA."""

from __future__ import annotations

import json
import os
import re
import ssl
from pathlib import Path

import httpx
from packaging.specifiers import SpecifierSet
from web_helpers import WebProcess, wait_for

from capsa.cli.capsules import tar_chunks
from tests.fixtures.daemon import RunningDaemon
from tests.fixtures.images import LayoutImages

EVIL = "<script>alert(1)</script>"
SLEEPER = ["/bin/sh", "-c", "trap 'exit 143' TERM; while :; do sleep 0.1; done"]


def _session(web: WebProcess, **kwargs: object) -> httpx.Client:
    client = httpx.Client(base_url=web.base, timeout=30, **kwargs)  # type: ignore[arg-type]
    assert client.get(web.new_login_url()).status_code == 200
    return client


def test_an_image_page_shows_layers_sizes_and_pull_history(daemon: RunningDaemon, web_dev: WebProcess,
                                                           test_images: LayoutImages) -> None:
    ref = test_images.ref("busybox")
    daemon.cli("image", "pull", ref, check=True, timeout=120)
    http = _session(web_dev)
    listing = http.get("/n/default/images")
    assert listing.status_code == 200 and "busybox" in listing.text
    href = re.search(r'href="(/n/default/images/[^"]*busybox[^"]*)"', listing.text)
    assert href, listing.text[-2000:]
    page = http.get(href.group(1))
    assert page.status_code == 200
    layer = test_images.images["busybox"].layers[0]
    assert str(layer.digest) in page.text, "every layer is listed with its digest"
    history = page.text.split('id="pull-history"', 1)[1]
    assert "completed" in history or "succeeded" in history or "done" in history, history[:1500]


def test_capsules_show_versions_dependency_graph_and_attached_jobs(daemon: RunningDaemon, web_dev: WebProcess,
                                                                   tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.csv").write_text("a,b\n1,2\n")
    with daemon.client() as admin:
        admin.create_capsule("webdata", "1.2.0", tar_chunks(tmp_path / "data"))
        admin.create_capsule("webdata", "2.0.0", tar_chunks(tmp_path / "data"))
        admin.create_capsule("webmodel", "3.0.0", tar_chunks(tmp_path / "data"), dependencies=["webdata>=1.2,<2"],
                             labels={"note": EVIL})
    res = daemon.cli("run", "-d", "--capsule", "webmodel@3.0.0", "--", *SLEEPER, check=True)
    job_id = res.stdout.decode().strip()
    http = _session(web_dev)
    capsules = http.get("/n/default/capsules")
    assert capsules.status_code == 200
    graph = json.loads(re.search(r'<script type="application/json" id="graph-data">(.*?)</script>',
                                 capsules.text, re.S).group(1))  # type: ignore[union-attr]
    # The daemon normalises requirements (specifier order may change): compare as specifier sets.
    edges = {(e["from"], e["to"], SpecifierSet(e["label"])) for e in graph["edges"]}
    assert edges == {("webmodel@3.0.0", "webdata@1.2.0", SpecifierSet(">=1.2,<2"))}, "2.0.0 does not satisfy <2"
    page = http.get("/n/default/capsules/webmodel")
    assert page.status_code == 200 and job_id[:12] in page.text and "&lt;2" in page.text
    assert EVIL not in page.text and "note=&lt;script&gt;alert(1)&lt;/script&gt;" in page.text, "labels render as text"
    job_page = http.get(f"/n/default/jobs/{job_id}")
    assert "webmodel@3.0.0" in job_page.text and "webdata@1.2.0" in job_page.text
    with daemon.client() as admin:
        admin.stop_job(job_id, grace_seconds=2)


def test_tls_dir_serves_https_with_its_own_ca_and_a_secure_cookie(daemon: RunningDaemon, tmp_path: Path) -> None:
    env = dict(os.environ, CAPSA_HOME=str(daemon.home))
    env.pop("CAPSA_CONFIG", None)
    web = WebProcess(config=daemon.home / "client-reader.yaml", env=env, log=tmp_path / "web-tls.log")
    web.start("--tls-dir", str(tmp_path / "tls"), "--public-name", "localhost")
    try:
        assert web.login_url.startswith("https://localhost:")
        ca = tmp_path / "tls" / "web-ca.pem"
        with httpx.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=30) as client:
            response = client.get(web.login_url)
            assert response.status_code == 200
            assert "secure" in response.headers["set-cookie"].lower()
            page = client.get(web.base + "/n/default/jobs")
            assert page.status_code == 200 and 'id="role">reader<' in page.text
        with httpx.Client(timeout=10) as untrusting:
            wait_for(lambda: _refused(untrusting, web.base), timeout=5, what="an untrusted certificate to be refused")
    finally:
        web.stop()


def _refused(client: httpx.Client, url: str) -> bool:
    try:
        client.get(url)
    except httpx.ConnectError:
        return True
    return False
