"""The ``harness`` fixture: an in-process supervisor with fake kernel collaborators (see sup_fakes)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sup_fakes import FakeDriver, FakeProcesses, FakeZygote, Harness

from capsa.logs import LogPersister
from capsa.runtime.client import SupervisorClient
from capsa.runtime.supervisor import Supervisor


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """Without standbys: every start goes through the (fake) zygote."""
    yield from _harness(tmp_path, None)


@pytest.fixture
def standby_harness(tmp_path: Path) -> Iterator[Harness]:
    """Standbys asked for after 10 ms without a start (capsa.runtime.standby)."""
    yield from _harness(tmp_path, 0.01)


def _harness(tmp_path: Path, standby_idle_s: float | None) -> Iterator[Harness]:
    processes = FakeProcesses()
    driver = FakeDriver(processes)
    zygote = FakeZygote(processes, driver)
    sup = Supervisor(tmp_path, driver=driver, zygote=zygote, processes=processes,
                     persister=LogPersister(fsync_on_close=False), standby_idle_s=standby_idle_s)
    processes.supervisor = sup
    sup.start(signals=False)
    thread = threading.Thread(target=sup.serve, name="test-supervisor", daemon=True)
    thread.start()
    client = SupervisorClient(tmp_path)
    try:
        yield Harness(tmp_path, sup, zygote, driver, processes, client, thread)
    finally:
        if thread.is_alive():   # (a test may have shut it down itself)
            client.shutdown()
        client.close()
        thread.join(10)
        assert not thread.is_alive(), "the supervisor loop did not stop"
