"""The web app in-process (Starlette's TestClient) with a fake daemon client: sign-in, sessions, CSRF,
host and origin checks, role refusals before any RPC, escaping, and the non-loopback bind rules."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest

from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from capsa.api.gen.capsa.v1 import metrics_pb2 as mpb
from capsa.config import NodeConfig
from capsa.errors import InvalidArgument, NotFound
from capsa.pki import Role, create_ca, issue_client_cert
from capsa.web.app import build_app
from capsa.web.auth import Sessions
from capsa.web.hub import Hub, Node
from capsa.web.server import WebOptions, check_bind
from capsa.web.tls import ensure_web_cert

with warnings.catch_warnings():   # Starlette 1.10 prefers httpx2 for its TestClient; httpx works the same here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

EVIL = '<script>alert(1)</script><img src=x onerror=alert(2)>'
_CA = create_ca("test CA")


class FakeClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.job = pb.Job(id="ab" * 16, name=EVIL, state="RUNNING", command=["/bin/echo", EVIL], created_at_ns=1)

    def list_jobs(self, *, all: bool = False) -> list[pb.Job]:
        self.calls.append(("list_jobs", all))
        return [self.job]

    def get_job(self, job_id: str) -> pb.Job:
        if not self.job.id.startswith(job_id):
            raise NotFound(f"no such job: {job_id}")
        return self.job

    def list_capsules(self) -> list[Any]:
        return []

    def stop_job(self, job_id: str) -> pb.Job:
        self.calls.append(("stop_job", job_id))
        return pb.Job(id=job_id, state="STOPPED")

    def node_stats(self) -> mpb.NodeStats:
        return mpb.NodeStats(cpu_count=2, memory_total_bytes=4 << 30, disk_total_bytes=10 << 30, timestamp_ns=1)

    def list_workflows(self, *, limit: int = 0) -> list[Any]:
        return []

    def version(self) -> pb.VersionInfo:
        return pb.VersionInfo(version="test")

    def pipeline(self) -> pb.Pipeline:
        self.calls.append(("pipeline", None))
        return pb.Pipeline(
            queues=[pb.QueueInfo(name="download", depth=3, in_flight=5, limit=5, waited_count=8,
                                 wait_p50_seconds=0.5, wait_p99_seconds=30),
                    pb.QueueInfo(name="unpack", limit=2)],
            pulls=[pb.PullInFlight(ref=f"registry.test/{EVIL}:1", run_id="r1", state="running", phase="fetch",
                                   layers_done=1, layers_total=4, bytes_done=3 << 20, bytes_total=12 << 20,
                                   started_at_ns=1)])

    def close(self) -> None:
        pass


def _node(role: Role, client: FakeClient) -> Node:
    issued = issue_client_cert(_CA, name=f"web-{role.value}", role=role)
    config = NodeConfig(address="127.0.0.1:7443", ca_pem=_CA.cert_pem, cert_pem=issued.cert_pem, key_pem=issued.key_pem)
    return Node("default", config, client=client)  # type: ignore[arg-type]


def _app(role: Role) -> tuple[TestClient, Sessions, FakeClient]:
    fake = FakeClient()
    sessions = Sessions()
    app = build_app(Hub([_node(role, fake)]), sessions, allowed_hosts={"testserver"}, origin="http://testserver")
    return TestClient(app, base_url="http://testserver"), sessions, fake


def _sign_in(http: TestClient, sessions: Sessions) -> str:
    response = http.get(f"/login?token={sessions.new_token()}")
    assert response.status_code == 200
    page = http.get("/n/default/jobs")
    return json.loads(re.search(r"hx-headers='([^']*)'", page.text).group(1))["X-CSRF-Token"]  # type: ignore[union-attr]


def _main(html: str) -> str:
    """The page's own content (the header's Sign out button changes nothing on the daemon)."""
    return html.split("<main>", 1)[1]


def test_a_token_signs_in_once_and_sets_a_strict_httponly_cookie() -> None:
    http, sessions, _ = _app(Role.DEVELOPER)
    token = sessions.new_token()
    first = http.get(f"/login?token={token}")
    cookie = first.headers["set-cookie"].lower()
    assert first.status_code == 200 and "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert TestClient(http.app, base_url="http://testserver").get(f"/login?token={token}").status_code == 403


def test_everything_but_login_and_static_needs_a_session() -> None:
    http, _, fake = _app(Role.DEVELOPER)
    assert http.get("/n/default/jobs").status_code == 401
    assert http.get("/static/app.css").status_code == 200
    assert http.get("/static/vendor/htmx-2.0.11.min.js").status_code == 200
    assert http.post("/n/default/jobs/abab/stop").status_code == 401
    assert fake.calls == []


def test_state_changes_need_the_sessions_csrf_token_and_our_origin() -> None:
    http, sessions, fake = _app(Role.DEVELOPER)
    csrf = _sign_in(http, sessions)
    url = f"/n/default/jobs/{fake.job.id}/stop"
    assert http.post(url).status_code == 403
    assert http.post(url, headers={"X-CSRF-Token": csrf[:-1]}).status_code == 403
    assert http.post(url, headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"}).status_code == 403
    assert ("stop_job", fake.job.id) not in fake.calls
    ok = http.post(url, headers={"X-CSRF-Token": csrf, "Origin": "http://testserver"})
    assert ok.status_code == 200 and ok.text == "stopped: STOPPED" and ("stop_job", fake.job.id) in fake.calls


def test_a_foreign_host_header_is_refused() -> None:
    http, sessions, _ = _app(Role.DEVELOPER)
    _sign_in(http, sessions)
    assert http.get("/n/default/jobs", headers={"Host": "attacker.example:8765"}).status_code == 421


def test_a_reader_gets_no_buttons_and_a_refusal_before_any_rpc() -> None:
    http, sessions, fake = _app(Role.READER)
    csrf = _sign_in(http, sessions)
    page = http.get(f"/n/default/jobs/{fake.job.id}")
    assert page.status_code == 200 and "<button" not in _main(page.text) and 'id="role">reader<' in page.text
    for action in ("stop", "remove", "cancel"):
        refused = http.post(f"/n/default/jobs/{fake.job.id}/{action}", headers={"X-CSRF-Token": csrf})
        assert refused.status_code == 403 and "reader" in refused.text
    assert not [c for c in fake.calls if c[0] != "list_jobs"]


def test_names_and_commands_are_escaped_and_pages_carry_security_headers() -> None:
    http, sessions, fake = _app(Role.DEVELOPER)
    _sign_in(http, sessions)
    for path in ("/n/default/jobs", f"/n/default/jobs/{fake.job.id}"):
        page = http.get(path)
        assert EVIL not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
        assert "<script>" not in page.text.replace('<script src="', "").split("</head>")[1]


def test_unknown_job_and_node_are_404() -> None:
    http, sessions, _ = _app(Role.DEVELOPER)
    _sign_in(http, sessions)
    assert http.get("/n/default/jobs/ffff").status_code == 404
    assert http.get("/n/elsewhere/jobs").status_code == 404


def test_non_loopback_binds_need_the_flag_and_tls(tmp_path: Path) -> None:
    check_bind(WebOptions(host="127.0.0.1"), None)
    check_bind(WebOptions(host="::1"), None)
    with pytest.raises(InvalidArgument, match="--allow-remote"):
        check_bind(WebOptions(host="0.0.0.0"), None)
    with pytest.raises(InvalidArgument, match="needs TLS"):
        check_bind(WebOptions(host="0.0.0.0", allow_remote=True), None)
    files = ensure_web_cert(tmp_path / "tls", ["dash.example", "10.0.0.5"])
    check_bind(WebOptions(host="0.0.0.0", allow_remote=True), files)
    assert files.ca is not None and (files.key.stat().st_mode & 0o777) == 0o600
    cert_before = files.cert.read_text()
    assert ensure_web_cert(tmp_path / "tls", ["dash.example"]).cert.read_text() == cert_before, "reused"
    ensure_web_cert(tmp_path / "tls", ["other.example"])
    assert files.cert.read_text() != cert_before and files.ca.read_text() in files.cert.read_text()


def test_several_nodes_each_with_its_own_client_and_role() -> None:
    dev_client, reader_client = FakeClient(), FakeClient()
    reader_client.job = pb.Job(id="cd" * 16, name="on-the-other-node", state="RUNNING", created_at_ns=1)
    dev, reader = _node(Role.DEVELOPER, dev_client), _node(Role.READER, reader_client)
    reader.name = "lab"
    sessions = Sessions()
    http = TestClient(build_app(Hub([dev, reader]), sessions, allowed_hosts={"testserver"}, origin="http://testserver"),
                      base_url="http://testserver")
    _sign_in(http, sessions)
    assert http.get("/", follow_redirects=False).headers["location"] == "/n/default/"
    lab = http.get("/n/lab/jobs")
    assert "on-the-other-node" in lab.text and 'href="/n/default/"' in lab.text and 'id="role">reader<' in lab.text
    assert "<button" in _main(http.get(f"/n/default/jobs/{dev_client.job.id}").text)
    assert "<button" not in _main(http.get(f"/n/lab/jobs/{reader_client.job.id}").text)


def test_htmx_gets_the_table_alone_but_a_history_restore_gets_the_whole_page() -> None:
    http, sessions, _ = _app(Role.DEVELOPER)
    _sign_in(http, sessions)
    fragment = http.get("/n/default/jobs", headers={"HX-Request": "true"})
    assert fragment.text.lstrip().startswith('<div id="jobs-table"') and "<html" not in fragment.text
    restore = http.get("/n/default/jobs", headers={"HX-Request": "true", "HX-History-Restore-Request": "true"})
    assert "<html" in restore.text and 'id="jobs-table"' in restore.text


def test_sort_links_toggle_and_the_pager_keeps_filters() -> None:
    http, sessions, fake = _app(Role.DEVELOPER)
    jobs = [pb.Job(id=f"{i:032x}", name=f"job-{i:02d}", state="COMPLETED", created_at_ns=i, ended=True)
            for i in range(60)]
    fake.list_jobs = lambda *, all=False: jobs  # type: ignore[method-assign]
    _sign_in(http, sessions)
    page = http.get("/n/default/jobs?sort=name&order=asc&state=COMPLETED&per_page=25").text
    assert "60 of 60 jobs · page 1 of 3" in page
    names = re.findall(r'<td class="name">([^<]*)</td>', page)
    assert names[:2] == ["job-00", "job-01"] and len(names) == 25
    assert re.search(r'href="\?state=COMPLETED&amp;sort=name&amp;order=desc&amp;page=1&amp;per_page=25"', page)
    assert re.search(r'href="\?state=COMPLETED&amp;sort=name&amp;order=asc&amp;page=2&amp;per_page=25"[^>]*rel="next"',
                     page)


def test_sign_out_ends_the_session_and_needs_the_csrf_token() -> None:
    http, sessions, _ = _app(Role.READER)
    csrf = _sign_in(http, sessions)
    assert http.post("/logout").status_code == 403
    out = http.post("/logout", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 200 and out.headers["hx-redirect"] == "/login?signed_out=1"
    assert http.get("/n/default/jobs").status_code == 401
    assert "signed out" in http.get("/login?signed_out=1").text


def test_the_overview_shows_engine_queues_and_pulls_from_one_pipeline_call() -> None:
    http, sessions, fake = _app(Role.READER)
    _sign_in(http, sessions)
    page = http.get("/n/default/", headers={"HX-Request": "true"})
    assert page.status_code == 200
    queues = page.text.split('id="queues"', 1)[1]
    download = queues.split('data-queue="download"', 1)[1].split("</tr>", 1)[0]
    assert '"q-depth">3<' in download and '"q-in-flight">5<' in download and "≤ 500 ms" in download
    assert "≤ 30.0 s" in download
    unpack = queues.split('data-queue="unpack"', 1)[1].split("</tr>", 1)[0]
    assert '"q-depth">0<' in unpack and "–" in unpack   # no run waited: no quantile
    assert '"q-pulls">1<' in page.text and '"q-depth">3<' in page.text.split('id="queues"')[0]
    pull = page.text.split('data-run="r1"', 1)[1].split("</tr>", 1)[0]
    assert "1/4" in pull and "3.0 MiB of 12.0 MiB" in pull and "fetch" in pull
    assert EVIL not in page.text and "registry.test/&lt;script&gt;" in pull
    assert [c for c in fake.calls if c[0] == "pipeline"] == [("pipeline", None)]
