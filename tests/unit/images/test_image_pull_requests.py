"""Idempotent image pulls (issue 15.4): a request id names the pull run it started."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from capsa.errors import InvalidArgument
from capsa.images.pull import PullContext
from capsa.images.service import ImageService
from capsa.images.store import ImageRecord, ImageStore
from capsa.state import Database

ALPINE = "docker.io/library/alpine:3"


@dataclass
class _Handle:
    run_id: str
    request: dict[str, Any]

    def wait(self, timeout: float | None = None) -> SimpleNamespace:
        return SimpleNamespace(request=self.request, state="succeeded")


class FakeEngine:
    """Starts nothing: records each start (a new run every time, as after the previous run ended)."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, str]] = []
        self.runs: dict[str, _Handle] = {}
        self._ids = itertools.count(1)

    def register(self, machine: object) -> None:
        pass

    def start(self, machine: str, resource_id: str, action: str, request: dict[str, Any]) -> _Handle:
        self.starts.append((machine, resource_id))
        handle = _Handle(f"run-{next(self._ids)}", request)
        self.runs[handle.run_id] = handle
        return handle

    def handle(self, run_id: str) -> _Handle:
        return self.runs[run_id]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "capsa.db")
    yield database
    database.close(checkpoint=False)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def images(db: Database, engine: FakeEngine) -> ImageService:
    store = ImageStore(db)
    store.put(ImageRecord(ref=ALPINE, digest="sha256:" + "1" * 64, source="registry", config={}, layers=[],
                          chain=[], top_snapshot="", size=1, created_ns=time.time_ns()))
    pc = PullContext(content=None, images=store, snapshotter=None, registry=None, s3=None,  # type: ignore[arg-type]
                     limits=None)  # type: ignore[arg-type]
    return ImageService(engine, pc)  # type: ignore[arg-type]


def test_a_retried_pull_returns_the_first_run_and_starts_no_other(images: ImageService, engine: FakeEngine) -> None:
    first = images.start_pull("alpine:3", always=True, request_id="pull-1")
    assert images.start_pull("alpine:3", always=True, request_id="pull-1") == first
    assert images.pull("alpine:3", always=True, request_id="pull-1").ref == ALPINE
    assert len(engine.starts) == 1


def test_pulls_without_or_with_other_request_ids_start_again(images: ImageService, engine: FakeEngine) -> None:
    images.start_pull("alpine:3", request_id="a")
    images.start_pull("alpine:3", request_id="b")
    images.start_pull("alpine:3")
    assert len(engine.starts) == 3


def test_the_request_id_survives_a_restart(db: Database, images: ImageService, engine: FakeEngine) -> None:
    first = images.start_pull("alpine:3", request_id="before-restart")
    again = ImageService(FakeEngine(), images.pc)  # type: ignore[arg-type]
    assert again.start_pull("alpine:3", request_id="before-restart") == first


def test_a_malformed_request_id_is_refused(images: ImageService) -> None:
    with pytest.raises(InvalidArgument, match="request id"):
        images.start_pull("alpine:3", request_id="a b")
