"""--log-max-size with a real daemon: a job writing 5x the limit keeps its newest bytes and reports the rest dropped."""

from __future__ import annotations

from features_helpers import wait_state

from tests.fixtures.daemon import RunningDaemon

LIMIT = 256 * 1024


def test_a_log_over_its_limit_keeps_the_newest_bytes_and_says_how_much_went(features_daemon: RunningDaemon) -> None:
    d = features_daemon
    # 1280 numbered lines of 1 KiB: 5x the limit.
    script = "i=0; while [ $i -lt 1280 ]; do printf '%05d %01018d\\n' $i 0; i=$((i+1)); done"
    job_id = d.cli("run", "-d", "--log-max-size", "256KiB", "--", "sh", "-c", script, check=True).stdout.decode().strip()
    info = wait_state(d, job_id, "COMPLETED", "FAILED", timeout=30)
    assert info["state"] == "COMPLETED", info
    dropped = info["log_dropped_bytes"]
    assert 5 * LIMIT - LIMIT - 64 * 1024 <= dropped < 5 * LIMIT   # about 4/5 of the output, in whole segments
    logs = d.cli("logs", job_id, check=True)
    lines = logs.stdout.decode().splitlines()
    assert lines[-1].startswith("01279 ")                            # the newest output is all there
    # The first kept chunk may start mid-line (pipe reads are not line-aligned): count from the second line.
    numbers = [int(line.split()[0]) for line in lines[1:]]
    assert numbers == list(range(numbers[0], 1280)) and numbers[0] > 1   # a contiguous tail
    assert len(logs.stdout) <= LIMIT
    assert f"log truncated: {dropped} bytes".encode() in logs.stderr      # the notice where the dropped part stood
    assert d.cli("run", "--log-max-size", "1K", "--", "true").returncode == 2   # below the minimum: refused
