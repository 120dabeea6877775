"""The dashboard's HTTP surface against a real daemon, without a browser: sign-in tokens work once,
no cookie / wrong CSRF / foreign Origin / foreign Host are refused, every page renders, and the log
event stream resumes at a sequence number with no gap or duplicate."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest
from web_helpers import WebProcess, wait_for

from tests.fixtures.daemon import RunningDaemon


def _signed_in(web: WebProcess) -> tuple[httpx.Client, str]:
    """A client holding a session cookie, and that session's CSRF token (read from a page)."""
    client = httpx.Client(base_url=web.base, timeout=30)
    response = client.get(web.new_login_url())
    assert response.status_code == 200 and any(name.startswith("capsa_session_") for name in client.cookies)
    cookie_header = response.headers["set-cookie"].lower()
    assert "httponly" in cookie_header and "samesite=strict" in cookie_header
    page = client.get("/n/default/jobs")
    csrf = json.loads(re.search(r"hx-headers='([^']*)'", page.text).group(1))["X-CSRF-Token"]  # type: ignore[union-attr]
    return client, csrf


def _events(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(event, id, data) of a finite event stream, read to its end."""
    out = []
    with client.stream("GET", url, headers=headers or {}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event, eid, data = "message", "", ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("id: "):
                eid = line[4:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and data:
                out.append((event, eid, data))
                if event in ("end", "failure"):
                    break
                event, eid, data = "message", "", ""
    return out


def test_the_sign_in_url_works_once(web_dev: WebProcess) -> None:
    url = web_dev.new_login_url()
    first = httpx.get(url)
    assert first.status_code == 200 and any(name.startswith("capsa_session_") for name in first.cookies)
    again = httpx.get(url)
    assert again.status_code == 403 and not any(name.startswith("capsa_session") for name in again.cookies)
    assert httpx.get(url.rsplit("=", 1)[0] + "=not-a-token").status_code == 403


def test_requests_without_a_session_or_with_a_wrong_csrf_token_are_refused(daemon: RunningDaemon,
                                                                           web_dev: WebProcess) -> None:
    job_id = daemon.cli("run", "-d", "--", "/bin/sh", "-c", "trap 'exit 143' TERM; while :; do sleep 0.1; done",
                        check=True).stdout.decode().strip()
    anonymous = httpx.Client(base_url=web_dev.base)
    for path in ("/n/default/", "/n/default/jobs", f"/n/default/jobs/{job_id}/logs/events", "/n/default/events/jobs"):
        assert anonymous.get(path).status_code == 401, path
    assert anonymous.post(f"/n/default/jobs/{job_id}/stop").status_code == 401
    client, csrf = _signed_in(web_dev)
    stop = f"/n/default/jobs/{job_id}/stop"
    assert client.post(stop).status_code == 403
    assert client.post(stop, headers={"X-CSRF-Token": "x" + csrf}).status_code == 403
    assert client.post(stop, headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"}).status_code == 403
    assert client.get("/n/default/", headers={"Host": "evil.example"}).status_code == 421
    with daemon.client("reader") as reader:
        assert reader.get_job(job_id).state == "RUNNING", "a refused request changed nothing"
    done = client.post(stop, headers={"X-CSRF-Token": csrf, "Origin": web_dev.base})
    assert done.status_code == 200 and "STOPPED" in done.text
    page = client.get("/n/default/jobs")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"


def test_every_page_renders(daemon: RunningDaemon, web_dev: WebProcess) -> None:
    client, _ = _signed_in(web_dev)
    job_id = daemon.cli("run", "-d", "--", "/bin/true", check=True).stdout.decode().strip()
    for path in ("/", "/n/default/", "/n/default/jobs?state=ACTIVE&sort=name&order=asc&per_page=25",
                 f"/n/default/jobs/{job_id}", "/n/default/workflows", "/n/default/images", "/n/default/capsules",
                 "/n/default/runtimes", "/n/default/resources"):
        response = client.get(path, follow_redirects=True)
        assert response.status_code == 200, (path, response.text[:300])
    assert client.get("/n/default/jobs/abcdef0123").status_code == 404
    assert client.get("/n/default/jobs/no-such-name").status_code == 404   # names work wherever ids do
    assert client.get("/n/default/jobs/-neither").status_code == 400       # neither a name nor an id
    assert client.get("/n/nowhere/jobs").status_code == 404


def test_the_log_stream_resumes_at_any_sequence_number_without_gap_or_duplicate(daemon: RunningDaemon,
                                                                                 web_dev: WebProcess) -> None:
    job_id = daemon.cli("run", "-d", "--", "/bin/sh", "-c",
                        "for i in $(seq 1 200); do echo out-$i; echo err-$i >&2; done",
                        check=True).stdout.decode().strip()
    with daemon.client("reader") as reader:
        wait_for(lambda: reader.get_job(job_id).ended, what="the job to end")
    client, _ = _signed_in(web_dev)
    url = f"/n/default/jobs/{job_id}/logs/events"
    full = [c for e, _, d in _events(client, url) if e == "log" for c in json.loads(d)["c"]]
    seqs = [c[0] for c in full]
    assert seqs == list(range(1, len(seqs) + 1))
    text = {1: "".join(c[2] for c in full if c[1] == 1), 2: "".join(c[2] for c in full if c[1] == 2)}
    assert text[1] == "".join(f"out-{i}\n" for i in range(1, 201))
    assert text[2] == "".join(f"err-{i}\n" for i in range(1, 201))
    for cut in (1, len(seqs) // 3, len(seqs) - 1):
        resumed = _events(client, url, headers={"Last-Event-ID": str(cut)})
        assert [c[0] for e, _, d in resumed if e == "log" for c in json.loads(d)["c"]] == seqs[cut:]
        by_query = _events(client, f"{url}?from_seq={cut + 1}")
        assert [c for e, _, d in by_query if e == "log" for c in json.loads(d)["c"]] == full[cut:]
    download = client.get(f"/n/default/jobs/{job_id}/logs.txt")
    assert download.status_code == 200 and download.text.count("out-") == 200 and download.text.count("err-") == 200


@pytest.mark.parametrize("role", ["reader"])
def test_a_readers_dashboard_refuses_changes_before_asking_the_daemon(daemon: RunningDaemon, web_reader: WebProcess,
                                                                      role: str) -> None:
    job_id = daemon.cli("run", "-d", "--", "/bin/sh", "-c", "trap 'exit 143' TERM; while :; do sleep 0.1; done",
                        check=True).stdout.decode().strip()
    client, csrf = _signed_in(web_reader)
    page = client.get(f"/n/default/jobs/{job_id}")
    assert page.status_code == 200 and "btn-stop" not in page.text and "<button" not in page.text.split("<main>")[1]
    for action in ("stop", "remove", "cancel"):
        response = client.post(f"/n/default/jobs/{job_id}/{action}", headers={"X-CSRF-Token": csrf})
        assert response.status_code == 403 and role in response.text, (action, response.text)
    time.sleep(0.2)
    with daemon.client("reader") as reader:
        assert reader.get_job(job_id).state == "RUNNING"
    daemon.cli("stop", job_id, check=True)


def test_a_developer_removes_an_ended_job_and_cancels_a_workflow(daemon: RunningDaemon, web_dev: WebProcess) -> None:
    client, csrf = _signed_in(web_dev)
    headers = {"X-CSRF-Token": csrf}
    job_id = daemon.cli("run", "-d", "--", "/bin/true", check=True).stdout.decode().strip()
    with daemon.client("reader") as reader:
        wait_for(lambda: reader.get_job(job_id).ended, what="the job to end")
    removed = client.post(f"/n/default/jobs/{job_id}/remove", headers=headers)
    assert removed.status_code == 200 and removed.headers["hx-redirect"] == "/n/default/jobs"
    assert client.get(f"/n/default/jobs/{job_id}").status_code == 404
    with daemon.client("developer") as developer:
        workflow = developer.submit_workflow(
            "name: long\njobs:\n  wait:\n    command: /bin/sh\n"
            "    args: [\"-c\", \"trap 'exit 143' TERM; while :; do sleep 0.1; done\"]\n", source="long.yaml")
        wait_for(lambda: developer.get_workflow(workflow.id).jobs[0].state == "RUNNING", what="RUNNING")
    page = client.get(f"/n/default/workflows/{workflow.id}")
    assert page.status_code == 200 and 'id="btn-wf-cancel"' in page.text
    canceled = client.post(f"/n/default/workflows/{workflow.id}/cancel", headers=headers)
    assert canceled.status_code == 200 and "CANCELED" in canceled.text
