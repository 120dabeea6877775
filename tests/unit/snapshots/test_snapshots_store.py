"""Snapshot metadata on a real SQLite database."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsa.errors import AlreadyExists, Conflict, FailedPrecondition, InvalidArgument, NotFound
from capsa.snapshots._store import SnapshotStore, check_labels
from capsa.snapshots.base import Kind, Usage
from capsa.state.db import Database


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(tmp_path / "capsa.db")
    yield database
    database.close()


def chain(store: SnapshotStore, db: Database, keys: list[str]) -> None:
    parent = None
    for key in keys:
        with db.tx() as conn:
            prow = store.check_new(conn, f"extract-{key}", parent)
            store.insert(conn, f"extract-{key}", prow, Kind.ACTIVE, {})
            row = store.require(f"extract-{key}", conn)
            store.commit(conn, row, key, None, Usage(1, 1))
        parent = key


def test_ancestors_are_nearest_first(db: Database) -> None:
    store = SnapshotStore(db, "overlay:/x")
    chain(store, db, ["l1", "l2", "l3"])
    assert [r.key for r in store.ancestors(store.require("l3"))] == ["l2", "l1"]
    assert store.ancestors(store.require("l1")) == []


def test_scopes_do_not_see_each_others_keys(db: Database) -> None:
    a, b = SnapshotStore(db, "overlay:/a"), SnapshotStore(db, "btrfs:/b")
    chain(a, db, ["same"])
    chain(b, db, ["same"])
    assert [r.key for r in a.all()] == ["same"] and [r.key for r in b.all()] == ["same"]
    assert a.require("same").id != b.require("same").id


def test_check_new_validates_key_and_parent(db: Database) -> None:
    store = SnapshotStore(db, "s")
    chain(store, db, ["base"])
    with db.tx() as conn:
        store.insert(conn, "busy", store.require("base", conn), Kind.ACTIVE, {})
    with db.tx() as conn:
        with pytest.raises(AlreadyExists):
            store.check_new(conn, "base", None)
        with pytest.raises(NotFound):
            store.check_new(conn, "new", "missing")
        with pytest.raises(FailedPrecondition):
            store.check_new(conn, "new", "busy")
        with pytest.raises(InvalidArgument):
            store.check_new(conn, "", None)


def test_commit_renames_records_usage_and_keeps_labels_unless_given(db: Database) -> None:
    store = SnapshotStore(db, "s")
    with db.tx() as conn:
        store.insert(conn, "work", None, Kind.ACTIVE, {"a": "1"})
        store.insert(conn, "work2", None, Kind.ACTIVE, {"a": "1"})
    with db.tx() as conn:
        store.commit(conn, store.require("work", conn), "layer", None, Usage(4096, 3))
        store.commit(conn, store.require("work2", conn), "layer2", {"b": "2"}, Usage(0, 0))
    layer = store.require("layer")
    assert (
        layer.kind is Kind.COMMITTED and layer.labels == {"a": "1"} and layer.stored_usage() == Usage(4096, 3)
    )
    assert store.require("layer2").labels == {"b": "2"}
    assert store.get("work") is None
    with db.tx() as conn, pytest.raises(AlreadyExists):
        store.commit(conn, store.require("layer", conn), "layer2", None, Usage(0, 0))


def test_a_parent_cannot_be_deleted_before_its_children(db: Database) -> None:
    store = SnapshotStore(db, "s")
    chain(store, db, ["p", "c"])
    with db.tx() as conn, pytest.raises(Conflict):
        store.delete(conn, store.require("p", conn))
    with db.tx() as conn:
        store.delete(conn, store.require("c", conn))
        store.delete(conn, store.require("p", conn))
    assert store.all() == []


def test_ids_are_not_reused_after_a_delete(db: Database) -> None:
    store = SnapshotStore(db, "s")
    chain(store, db, ["a"])
    first = store.require("a").id
    with db.tx() as conn:
        store.delete(conn, store.require("a", conn))
    chain(store, db, ["b"])
    assert store.require("b").id > first


def test_labels_must_be_strings_of_bounded_size() -> None:
    assert check_labels({"k": "v"}) == {"k": "v"}
    assert check_labels(None) == {}
    with pytest.raises(InvalidArgument):
        check_labels({"k": 1})  # type: ignore[dict-item]
    with pytest.raises(InvalidArgument):
        check_labels({"k": "v" * 5000})


def test_schema_is_registered_under_the_snapshots_component(db: Database) -> None:
    SnapshotStore(db, "s")
    assert db.schema_version("snapshots") == 1
