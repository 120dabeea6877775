"""Host usage from /proc text and statvfs: CPU over the time between samples, memory available, disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from capsa.metrics import HostReader, parse_cpu_line, parse_meminfo

STAT = "cpu  100 0 50 800 50 0 0 0 10 0\ncpu0 50 0 25 400 25 0 0 0 5 0\nintr 1 2 3\n"
MEMINFO = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\nHugePages_Total: 0\n"


def test_busy_excludes_idle_and_iowait_and_guest_is_not_counted_twice() -> None:
    assert parse_cpu_line(STAT) == (150, 1000)


def test_a_stat_without_a_cpu_line_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_cpu_line("intr 1\n")


def test_meminfo_is_in_bytes() -> None:
    mem = parse_meminfo(MEMINFO)
    assert mem["MemTotal"] == 16_000_000 * 1024 and mem["MemAvailable"] == 8_000_000 * 1024
    assert mem["HugePages_Total"] == 0


def test_cpu_percent_is_over_the_interval_between_samples(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "stat").write_text(STAT)
    (proc / "meminfo").write_text(MEMINFO)
    (proc / "loadavg").write_text("0.50 0.25 0.10 1/100 1234\n")
    (proc / "uptime").write_text("3600.5 7000.0\n")
    reader = HostReader(tmp_path, proc=proc)
    first = reader.sample()
    assert first.cpu_percent == pytest.approx(15.0)          # since boot
    (proc / "stat").write_text("cpu  200 0 100 850 50 0 0 0 0 0\n")   # +150 busy of +200
    second = reader.sample()
    assert second.cpu_percent == pytest.approx(75.0)
    assert second.memory_available == 8_000_000 * 1024 and second.load1 == 0.5 and second.uptime_s == 3600.5
    st = os.statvfs(tmp_path)
    assert second.disk_total == st.f_blocks * st.f_frsize and 0 < second.disk_free <= second.disk_total


def test_the_real_host_can_be_sampled(tmp_path: Path) -> None:
    sample = HostReader(tmp_path).sample()
    assert 0 <= sample.cpu_percent <= 100 and sample.memory_total > sample.memory_available > 0
    assert sample.cpu_count >= 1
