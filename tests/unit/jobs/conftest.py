"""A JobService on a real SQLite file, with a fake supervisor and fake resources (no root needed)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from capsa.jobs.resources import JobResource
from capsa.jobs.service import JobService
from capsa.state import Database
from tests.fixtures.fakes import FakeResource, FakeSupervisor

MakeService = Callable[..., JobService]


@pytest.fixture
def supervisor() -> FakeSupervisor:
    return FakeSupervisor()


@pytest.fixture
def network() -> FakeResource:
    return FakeResource(serves="network")


@pytest.fixture
def volumes() -> FakeResource:
    return FakeResource(serves="volumes")


@pytest.fixture
def make_service(tmp_path: Path, supervisor: FakeSupervisor) -> Iterator[MakeService]:
    """Build a JobService over ``tmp_path``'s database (call again to play a daemon restart)."""
    opened: list[Database] = []

    def make(resources: Sequence[JobResource] = (), *, attach: bool = True) -> JobService:
        db = Database(tmp_path / "capsa.db")
        opened.append(db)
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        service = JobService(db, home, supervisor, resources=resources, stop_grace_s=1.0,
                             kill_lost=lambda job_id: None, restart_supervisor=lambda: None)
        if attach:
            service.attach_supervisor()
        return service

    yield make
    for db in opened:
        db.close(checkpoint=False)


@pytest.fixture
def service(make_service: MakeService, network: FakeResource, volumes: FakeResource) -> JobService:
    return make_service([network, volumes])
