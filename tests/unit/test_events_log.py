"""The events table: recorded with the change, replayed from a time, filtered, shared by every writer of a database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsa.events import EventLog
from capsa.state import Database


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "capsa.db")
    yield database
    database.close(checkpoint=False)


def test_events_replay_in_order_from_a_time_and_filter(db: Database) -> None:
    log = EventLog.of(db)
    assert EventLog.of(db) is log
    log.record("job", "created", "j1", name="web", attributes={"image": "alpine"})
    middle = time.time_ns()
    log.record("image", "pulled", "alpine:3")
    log.record("job", "exited", "j1", attributes={"exit_code": 3})
    everything = log.after(0)
    assert [(e.type, e.action, e.id) for e in everything] == [
        ("job", "created", "j1"), ("image", "pulled", "alpine:3"), ("job", "exited", "j1")]
    assert everything[0].name == "web" and everything[2].attributes == {"exit_code": "3"}
    assert [e.action for e in log.after(log.start_seq(middle))] == ["pulled", "exited"]
    assert [e.action for e in log.after(0, types=["job"])] == ["created", "exited"]
    assert log.after(0, ids=["alpine:3"])[0].action == "pulled"
    assert log.start_seq(0) == log.last_seq == everything[-1].seq


def test_an_event_in_the_callers_transaction_commits_with_it(db: Database) -> None:
    log = EventLog.of(db)
    with pytest.raises(RuntimeError), db.tx() as conn:
        log.record("job", "created", "rolled-back", conn=conn)
        raise RuntimeError("the change failed")
    assert log.after(0) == []
    with pytest.raises(ValueError):
        log.record("planet", "created", "x")


def test_a_read_is_bounded_by_the_committed_seq(db: Database) -> None:
    log = EventLog.of(db)
    for i in range(3):
        log.record("job", "created", f"j{i}")
    assert log.visible_seq() == log.last_seq == 3
    assert [e.id for e in log.after(0, upto=2)] == ["j0", "j1"]
    with pytest.raises(RuntimeError), db.tx() as conn:
        log.record("job", "created", "uncommitted", conn=conn)
        raise RuntimeError
    assert log.visible_seq() == 3 and [e.id for e in log.after(3)] == []


def test_an_image_recorded_is_a_pulled_event(db: Database) -> None:
    from capsa.images.store import ImageRecord, ImageStore

    ImageStore(db).put(ImageRecord(ref="registry.local/app:1", digest="sha256:" + "a" * 64, source="registry",
                                   config={}, layers=[], chain=[], top_snapshot="", size=1, created_ns=1))
    (event,) = EventLog.of(db).after(0, types=["image"])
    assert (event.action, event.id, event.attributes["source"]) == ("pulled", "registry.local/app:1", "registry")
