"""The dashboard in a real browser (Debian's headless Chromium) against a real daemon: sign-in, live jobs
table, live logs with resume, live memory chart, stop (developer) and refusal (reader), the diamond
workflow's DAG, and hostile names/commands/log lines rendered as text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from web_helpers import WebProcess, diamond_yaml, sign_in, wait_for

from tests.fixtures.daemon import RunningDaemon

# Without selenium the whole module is skipped, with the reason (the _chromium fixture does the same
# when Debian's chromium or chromium-driver is missing).
By = pytest.importorskip("selenium.webdriver.common.by", reason="selenium is not installed: pip install -e '.[test]'").By

# A job that ends promptly on SIGTERM (a bare `sleep` as PID 1 ignores it and waits for the stop grace's SIGKILL).
SLEEPER = ("/bin/sh", "-c", "trap 'exit 143' TERM; while :; do sleep 0.1; done")


def _run(daemon: RunningDaemon, *argv: str, name: str) -> str:
    res = daemon.cli("run", "-d", "--name", name, "--", *argv, check=True)
    return res.stdout.decode().strip()


def _js(driver: Any, script: str) -> Any:
    return driver.execute_script(script)


def test_sign_in_then_a_job_started_from_the_cli_appears_without_reload(
        daemon: RunningDaemon, web_dev: WebProcess, browser: Any) -> None:
    sign_in(browser, web_dev, "/")
    assert browser.current_url.endswith("/n/default/"), browser.current_url
    assert browser.find_element(By.ID, "role").text == "developer"
    browser.get(web_dev.base + "/n/default/jobs")
    _js(browser, "window.__notReloaded = true;")
    job_id = _run(daemon, *SLEEPER, name="appears-live")
    row = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]'),
                   what="the new job's row")[0]
    assert "appears-live" in row.text
    wait_for(lambda: browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]')
             .get_attribute("data-state") == "RUNNING", what="RUNNING")
    assert _js(browser, "return window.__notReloaded === true;"), "the page reloaded instead of updating live"
    name = browser.find_element(By.NAME, "name")
    name.send_keys("appears-li")                     # the filter narrows the table in place (htmx)
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#jobs-table tbody tr[data-job]")) == 1,
             what="the filtered table")
    wait_for(lambda: "name=appears-li" in browser.current_url, what="the filter in the address (pushed by htmx)")
    assert _js(browser, "return window.__notReloaded === true;")
    daemon.cli("stop", job_id, check=True)


def test_logs_follow_live_and_resume_after_reconnect_with_no_gap_or_duplicate(
        daemon: RunningDaemon, web_dev: WebProcess, browser: Any) -> None:
    script = "for i in $(seq 1 60); do echo out-$i; echo err-$i >&2; sleep 0.05; done"
    job_id = _run(daemon, "/bin/sh", "-c", script, name="logger")
    sign_in(browser, web_dev, f"/n/default/jobs/{job_id}")
    wait_for(lambda: "out-5\n" in browser.find_element(By.ID, "logs").text + "\n", what="live log lines")
    _js(browser, "window.capsaLogs.reconnect();")          # drop the stream mid-job and resume from lastSeq + 1
    wait_for(lambda: "out-25" in browser.find_element(By.ID, "logs").text, what="more lines after reconnect")
    _js(browser, "window.capsaLogs.reconnect();")
    wait_for(lambda: browser.find_element(By.ID, "log-status").text.startswith("job ended"), timeout=30,
             what="the end of the log")
    stats = _js(browser, "return window.capsaLogs.stats;")
    assert stats["connects"] >= 3 and stats["gaps"] == 0 and stats["dups"] == 0, stats
    # Blocks of the view may add a blank line to the element's rendered text where one ends; never a log line.
    lines = [line for line in browser.find_element(By.ID, "logs").text.splitlines() if line]
    assert sorted(line for line in lines if line.startswith("out-")) == sorted(f"out-{i}" for i in range(1, 61))
    assert len(lines) == 120, "every line exactly once"
    stderr = browser.find_elements(By.CSS_SELECTOR, "#logs span.stderr")
    assert stderr and all("out-" not in s.text for s in stderr), "stderr is told apart from stdout"
    assert any("err-60" in s.text for s in stderr)


def test_memory_chart_moves_and_draws_the_limit(daemon: RunningDaemon, web_dev: WebProcess, browser: Any) -> None:
    grow = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\nb=[]\nfor i in range(16):\n    b.append(bytearray(8<<20)); time.sleep(0.25)\ntime.sleep(30)"
    res = daemon.cli("run", "-d", "--name", "grower", "--max-memory", "256", "--", "python3", "-c", grow, check=True)
    job_id = res.stdout.decode().strip()
    sign_in(browser, web_dev, f"/n/default/jobs/{job_id}")
    wait_for(lambda: (_js(browser, "return window.capsaCharts.points;") or 0) >= 2, what="first samples")
    first = _js(browser, "return window.capsaCharts.lastMem;")
    wait_for(lambda: (_js(browser, "return window.capsaCharts.lastMem;") or 0) > (first or 0) + (20 << 20),
             timeout=20, what="memory to grow on the chart")
    assert _js(browser, "return window.capsaCharts.memLimit;") == 256 << 20
    legend = browser.find_element(By.ID, "chart-mem").text
    assert "limit" in legend and browser.find_elements(By.CSS_SELECTOR, "#chart-mem canvas")
    assert "of 256 MiB limit" in browser.find_element(By.ID, "mem-now").text
    daemon.cli("stop", job_id, check=True)


def test_a_developer_stops_a_job_from_its_page(daemon: RunningDaemon, web_dev: WebProcess, browser: Any) -> None:
    job_id = _run(daemon, *SLEEPER, name="to-stop")
    sign_in(browser, web_dev, f"/n/default/jobs/{job_id}")
    wait_for(lambda: browser.find_element(By.ID, "job-state").text == "RUNNING", what="RUNNING")
    browser.find_element(By.ID, "btn-stop").click()
    wait_for(lambda: browser.find_element(By.ID, "job-state").text == "STOPPED", timeout=30, what="STOPPED")
    with daemon.client("reader") as client:
        assert client.get_job(job_id).state == "STOPPED"
    assert browser.find_element(By.ID, "btn-remove").is_enabled()


def test_a_reader_sees_no_buttons_and_is_refused_anyway(daemon: RunningDaemon, web_reader: WebProcess,
                                                        browser: Any) -> None:
    job_id = _run(daemon, *SLEEPER, name="reader-cannot-stop")
    sign_in(browser, web_reader, f"/n/default/jobs/{job_id}")
    assert browser.find_element(By.ID, "role").text == "reader"
    assert not browser.find_elements(By.CSS_SELECTOR, "#job-actions, main button")
    # Forge the request the stop button would send, with this session's real CSRF token.
    status = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const csrf = JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token'];
        fetch(location.pathname + '/stop', {method: 'POST', headers: {'X-CSRF-Token': csrf}})
          .then(r => r.text().then(t => done([r.status, t])));""")
    assert status[0] == 403 and "reader" in status[1], status
    with daemon.client("reader") as client:
        assert client.get_job(job_id).state == "RUNNING"
    browser.find_element(By.ID, "sign-out").click()
    wait_for(lambda: "signed_out" in browser.current_url, what="the signed-out page")
    browser.get(web_reader.base + f"/n/default/jobs/{job_id}")
    assert "not signed in" in browser.find_element(By.TAG_NAME, "body").text
    daemon.cli("stop", job_id, check=True)


def test_the_diamond_workflow_is_drawn_and_its_nodes_reach_their_final_colours(
        daemon: RunningDaemon, web_dev: WebProcess, browser: Any, tmp_path: Path) -> None:
    path = tmp_path / "diamond.yaml"
    path.write_text(diamond_yaml())
    workflow_id = daemon.cli("workflow", "run", str(path), check=True).stdout.decode().strip()
    sign_in(browser, web_dev, f"/n/default/workflows/{workflow_id}")
    nodes = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#dag g.node"), what="the drawn DAG")
    assert sorted(n.get_attribute("data-node") for n in nodes) == ["a", "b", "c", "d"]
    labels = sorted(e.text for e in browser.find_elements(By.CSS_SELECTOR, "#dag .edge-label"))
    assert labels == ["a=COMPLETED", "a=COMPLETED", "b=COMPLETED", "c=COMPLETED"], labels
    seen: set[str] = set()

    def all_completed() -> bool:
        states = {n.get_attribute("data-node"): n.get_attribute("data-state")
                  for n in browser.find_elements(By.CSS_SELECTOR, "#dag g.node")}
        seen.update(f"{k}:{v}" for k, v in states.items())
        return set(states.values()) == {"COMPLETED"}
    wait_for(all_completed, timeout=40, interval=0.05, what="every node COMPLETED")
    assert "b:RUNNING" in seen or "c:RUNNING" in seen, f"never saw a node change live: {sorted(seen)}"
    fill = _js(browser, "return getComputedStyle(document.querySelector('#dag g[data-node=d] rect')).fill;")
    assert fill == "rgb(154, 230, 180)", fill   # the COMPLETED green of app.css
    wait_for(lambda: browser.find_element(By.ID, "wf-state").text == "COMPLETED", what="workflow COMPLETED")
    browser.find_element(By.CSS_SELECTOR, "#dag g[data-node=d]").click()
    wait_for(lambda: "/jobs/" in browser.current_url, what="the click to open job d")
    assert "diamond/d" in browser.find_element(By.ID, "job-name").text


def test_html_in_labels_commands_and_logs_renders_as_text(daemon: RunningDaemon, web_dev: WebProcess,
                                                          browser: Any) -> None:
    # Job names are refused unless they match capsa's name pattern (no HTML can get in that way);
    # labels, commands and output carry any text, so they are what must render as text.
    evil = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2"><b>bold</b>'
    res = daemon.cli("run", "-d", "--name", "xss-probe", "--label", f"note={evil}", "--",
                     "/bin/sh", "-c", f"echo '{evil}'; echo '{evil}' >&2", check=True)
    job_id = res.stdout.decode().strip()
    sign_in(browser, web_dev, "/n/default/jobs?name=xss-probe")
    row = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]'), what="row")
    assert evil in row[0].text
    browser.get(web_dev.base + f"/n/default/jobs/{job_id}")
    wait_for(lambda: browser.find_element(By.ID, "log-status").text.startswith("job ended"), what="log end")
    assert browser.find_element(By.ID, "job-name").text == "xss-probe"
    assert evil in browser.find_element(By.ID, "job-command").text
    assert browser.find_element(By.ID, "logs").text.count(evil) == 2
    assert not browser.find_elements(By.CSS_SELECTOR, "main b, main img, #logs script")
    assert _js(browser, "return window.__xss;") is None


def test_leaving_a_job_page_ends_its_streams(daemon: RunningDaemon, web_dev: WebProcess, browser: Any) -> None:
    """Each open job page holds a log and a metrics stream (a thread and an RPC each in capsa web);
    closing the page must end them, or a dashboard left open for days would pile them up."""
    assert web_dev.proc is not None
    tasks = Path(f"/proc/{web_dev.proc.pid}/task")

    def streams() -> int:   # threads capsa.web.streams names "capsa-web-strm"
        count = 0
        for task in tasks.iterdir():
            try:
                count += (task / "comm").read_text().strip() == "capsa-web-strm"
            except OSError:   # the thread ended while we looked
                pass
        return count

    job_id = _run(daemon, *SLEEPER, name="streams-end")
    sign_in(browser, web_dev, "/n/default/jobs")
    for _ in range(3):
        browser.get(web_dev.base + f"/n/default/jobs/{job_id}")
        wait_for(lambda: (_js(browser, "return window.capsaCharts && window.capsaCharts.points;") or 0) >= 1,
                 what="the metrics stream")
        wait_for(lambda: streams() == 2, what="one thread for the log stream and one for the metrics stream")
        browser.get("about:blank")
        wait_for(lambda: streams() == 0, what="the streams' threads to end when the page closed")
    daemon.cli("stop", job_id, check=True)
