"""The one duration syntax (30s, 2h30m, 1.5h, 500ms) and --schedule times (a delay or RFC 3339)."""

from __future__ import annotations

import datetime as dt

import pytest

from capsa.errors import InvalidArgument
from capsa.jobs.schedule import parse_duration, parse_start_time

NOW_NS = int(dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC).timestamp() * 1e9)


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("2h30m", 9000), ("1.5h", 5400), ("500ms", 0.5), ("1d", 86400), ("1m30s", 90), (" 5M ", 300),
])
def test_durations_add_up_their_parts(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    ("30", "has no unit: write 30s"),
    ("abc", "is not a duration"),
    ("5x", "is not a duration"),
    ("-5s", "is not a duration"),
    ("0s", "longer than zero"),
    ("4000d", "ten years"),
    ("1h 30m", "is not a duration"),
])
def test_bad_durations_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_duration(text, what="--timeout")


def test_the_error_names_the_flag() -> None:
    with pytest.raises(InvalidArgument, match="^--timeout 'soon'"):
        parse_duration("soon", what="--timeout")


def test_a_delay_schedule_is_counted_from_now() -> None:
    assert parse_start_time("2h30m", now_ns=NOW_NS) == NOW_NS + 9000 * 10**9


@pytest.mark.parametrize(("text", "expected"), [
    ("2030-01-02T04:00:00Z", dt.datetime(2030, 1, 2, 4, tzinfo=dt.UTC)),
    ("2030-01-02t04:00:00z", dt.datetime(2030, 1, 2, 4, tzinfo=dt.UTC)),
    ("2030-01-02T06:00:00+02:00", dt.datetime(2030, 1, 2, 4, tzinfo=dt.UTC)),
    ("2030-01-02T04:00:00.250Z", dt.datetime(2030, 1, 2, 4, 0, 0, 250000, tzinfo=dt.UTC)),
])
def test_rfc3339_times_with_a_zone_are_absolute(text: str, expected: dt.datetime) -> None:
    assert parse_start_time(text, now_ns=NOW_NS) == int(expected.timestamp() * 1e9)


@pytest.mark.parametrize(("text", "message"), [
    ("2030-01-02T04:00:00", "RFC 3339 time with a zone"),     # no zone: ambiguous
    ("2030-01-02", "RFC 3339 time with a zone"),
    ("2030-13-02T04:00:00Z", "month must be in 1..12"),
    ("2030-01-02T03:00:00Z", "in the past"),
    ("tomorrow", "is not a duration"),
    ("2050-01-02T04:00:00Z", "more than ten years away"),
])
def test_bad_schedules_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_start_time(text, now_ns=NOW_NS)
