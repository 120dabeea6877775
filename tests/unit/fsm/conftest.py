from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from capsa.fsm import Engine, RetryPolicy
from capsa.state.db import Database

FAST_RETRY = RetryPolicy(base_s=0.01, cap_s=0.05, max_attempts=5)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "capsa.db"


@pytest.fixture
def db(db_path: Path) -> Iterator[Database]:
    database = Database(db_path)
    yield database
    database.close()


@pytest.fixture
def make_engine(db: Database) -> Iterator[Callable[..., Engine]]:
    """Engines on the test database (fast retries unless given), all shut down afterwards."""
    engines: list[Engine] = []

    def make(**kwargs: Any) -> Engine:
        kwargs.setdefault("retry", FAST_RETRY)
        engine = Engine(db, **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.shutdown(timeout=5)
