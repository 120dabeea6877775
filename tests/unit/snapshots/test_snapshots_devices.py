"""Thin device id allocation and the restart reconciliation plan (pure functions)."""

from __future__ import annotations

import pytest

from capsa.errors import LimitExceeded
from capsa.snapshots.devmapper.dmsetup import MAX_THIN_ID, DeviceInfo
from capsa.snapshots.devmapper.pool import Action, DeviceRecord, DeviceState, next_device_id, plan_reconcile


def rec(name: str, state: DeviceState, snapshot_id: int | None = 1) -> DeviceRecord:
    return DeviceRecord(name, "pool", int(name.rsplit("-", 1)[1]), None, 1 << 30, state, "", snapshot_id, None)


def live(name: str, *, suspended: bool = False, table_live: bool = True, open_count: int = 0) -> DeviceInfo:
    return DeviceInfo(name, "dm-3", suspended, False, table_live, False, 253, 3, open_count, 1, 0)


def test_ids_grow_past_the_highest_in_use() -> None:
    assert next_device_id([]) == 1
    assert next_device_id([1, 2, 7]) == 8


def test_ids_wrap_to_the_lowest_free_one() -> None:
    assert next_device_id([MAX_THIN_ID, 1, 2]) == 3


def test_ids_run_out() -> None:
    with pytest.raises(LimitExceeded):
        next_device_id(range(1, MAX_THIN_ID + 1))


def test_an_id_never_sent_to_the_pool_is_forgotten() -> None:
    assert plan_reconcile([rec("pool-snap-1", DeviceState.UNKNOWN)], {}, set(), set()) == [
        Action("forget", "pool-snap-1")
    ]


def test_an_interrupted_create_is_marked_faulty_and_never_deleted() -> None:
    plan = plan_reconcile([rec("pool-snap-2", DeviceState.CREATING)], {}, {"pool-snap-2"}, set())
    assert plan == [Action("faulty", "pool-snap-2")]


def test_a_device_left_suspended_is_resumed() -> None:
    records = [rec("pool-snap-3", DeviceState.SUSPENDED)]
    plan = plan_reconcile(
        records, {"pool-snap-3": live("pool-snap-3", suspended=True)}, {"pool-snap-3"}, set()
    )
    assert Action("resume", "pool-snap-3") in plan


def test_active_snapshots_devices_are_activated_after_a_reboot() -> None:
    plan = plan_reconcile([rec("pool-snap-4", DeviceState.ACTIVATED)], {}, {"pool-snap-4"}, set())
    assert plan == [Action("activate", "pool-snap-4")]


def test_a_live_device_in_a_transient_state_is_recorded_as_activated() -> None:
    plan = plan_reconcile(
        [rec("pool-snap-5", DeviceState.DEACTIVATING)],
        {"pool-snap-5": live("pool-snap-5")},
        {"pool-snap-5"},
        set(),
    )
    assert plan == [Action("state", "pool-snap-5", DeviceState.ACTIVATED)]


def test_unused_committed_devices_are_deactivated_but_open_ones_kept() -> None:
    records = [rec("pool-snap-6", DeviceState.RESUMED), rec("pool-snap-7", DeviceState.RESUMED)]
    infos = {"pool-snap-6": live("pool-snap-6"), "pool-snap-7": live("pool-snap-7", open_count=1)}
    plan = plan_reconcile(records, infos, set(), {"pool-snap-6", "pool-snap-7"})
    assert plan == [Action("deactivate", "pool-snap-6")]


def test_removals_and_faulty_devices_are_left_to_cleanup() -> None:
    records = [rec("pool-snap-8", DeviceState.REMOVING), rec("pool-snap-9", DeviceState.FAULTY)]
    assert plan_reconcile(records, {}, set(), set()) == []


def test_unloaded_devices_are_recorded_as_deactivated() -> None:
    plan = plan_reconcile([rec("pool-snap-10", DeviceState.ACTIVATING)], {}, set(), {"pool-snap-10"})
    assert plan == [Action("state", "pool-snap-10", DeviceState.DEACTIVATED)]
