"""Names, labels and filters: how people find jobs without copying ids.

Outside :mod:`capsa.jobs` on purpose: ``capsa ps --filter`` and ``capsa logs --since`` parse with it,
and importing the jobs package would pull the daemon side into the CLI's import budget.

* A job name ``fullmatch``es :data:`NAME_PATTERN` and is unique among existing jobs (a partial unique
  index decides, so two concurrent submissions cannot both take it). Workflow jobs are named
  ``WORKFLOW/JOB`` by the engine and are outside that rule: the same workflow runs many times.
* Labels are ``KEY=VALUE`` pairs stored as a JSON object on the job row; filters read them with
  ``json_each`` inside the same SELECT as the page, so ``ps --filter`` pages as fast as plain ``ps``.
* :class:`JobFilter` is what ``ListJobsRequest`` carries; :meth:`JobFilter.sql` turns it into WHERE terms.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from capsa.errors import InvalidArgument

__all__ = ["FILTER_KEYS", "LABEL_KEY_PATTERN", "NAME_PATTERN", "JobFilter", "check_labels", "check_name",
           "filter_from_pb", "parse_filters", "parse_since"]

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
LABEL_KEY_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_./-]{0,127}"
MAX_LABEL_VALUE = 1024
MAX_LABELS = 64
FILTER_KEYS = ("state", "label", "name", "image", "since", "workflow")
_STATES = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "STOPPED", "SCHEDULED", "CANCELED", "TIMEOUT")


def check_name(name: str) -> str:
    if name and not re.fullmatch(NAME_PATTERN, name):
        raise InvalidArgument(f"--name {name!r}: a name is 1-64 characters among letters, digits and _ . -,"
                              " starting with a letter or digit")
    return name


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"--label: at most {MAX_LABELS} labels, got {len(labels)}")
    for key, value in labels.items():
        if not re.fullmatch(LABEL_KEY_PATTERN, key):
            raise InvalidArgument(f"--label {key!r}: a key is 1-128 characters among letters, digits and _ . / -,"
                                  " starting with a letter or digit")
        if len(value) > MAX_LABEL_VALUE or "\n" in value:
            raise InvalidArgument(f"--label {key}: the value must be one line of at most {MAX_LABEL_VALUE} characters")
    return dict(labels)


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_since(text: str, *, what: str = "since", now_ns: int | None = None) -> int:
    """A duration before now (``10m``, ``1h30m``; the grammar of capsa.jobs.schedule.parse_duration)
    or an RFC 3339 time with a zone: wall-clock nanoseconds."""
    import time

    bad = InvalidArgument(f"{what} {text!r}: expected a duration like 10m or 1h30m, or an RFC 3339 time"
                          " like 2026-01-02T15:04:05Z")
    value = text.strip()
    now = time.time_ns() if now_ns is None else now_ns
    if _DURATION.fullmatch(value.lower()):
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(value.lower()))
        if seconds > 10 * 365 * 86400:
            raise bad
        return now - int(seconds * 1e9)
    from datetime import datetime

    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise bad from None
    if when.tzinfo is None or "T" not in value.upper():
        raise InvalidArgument(f"{what} {text!r}: an RFC 3339 time needs a date, a time and a zone (Z or +HH:MM)")
    ns = int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000
    if not 0 <= ns < 2**63:   # SQLite integers (and proto int64) end in 2262
        raise InvalidArgument(f"{what} {text!r}: out of range (1970 to 2262)")
    return ns


@dataclass(frozen=True)
class JobFilter:
    """Conditions that all hold (AND); a repeated ``state`` or ``name`` matches any of its values."""

    states: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    workflows: tuple[str, ...] = ()
    labels: tuple[tuple[str, str | None], ...] = ()   # (key, None): the key is set, any value
    since_ns: int = 0

    @property
    def empty(self) -> bool:
        return not (self.states or self.names or self.images or self.workflows or self.labels or self.since_ns)

    def sql(self) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        for column, values in (("state", self.states), ("name", self.names), ("image", self.images)):
            if values:
                where.append(f"{column} IN ({','.join('?' * len(values))})")
                params.extend(values)
        if self.workflows:
            # a workflow by full id or id prefix (ids are lowercase hex: a range keeps the index usable)
            terms = []
            for wf in self.workflows:
                terms.append("(workflow_id >= ? AND workflow_id < ?)")
                params.extend((wf, wf[:-1] + chr(ord(wf[-1]) + 1)))
            where.append("(" + " OR ".join(terms) + ")")
        for key, value in self.labels:
            if value is None:
                where.append("EXISTS (SELECT 1 FROM json_each(jobs.labels) WHERE json_each.key = ?)")
                params.append(key)
            else:
                where.append("EXISTS (SELECT 1 FROM json_each(jobs.labels) WHERE json_each.key = ?"
                             " AND json_each.value = ?)")
                params.extend((key, value))
        if self.since_ns:
            where.append("created_ns >= ?")
            params.append(self.since_ns)
        return where, params


def parse_filters(items: Sequence[str], *, now_ns: int | None = None) -> JobFilter:
    """``KEY=VALUE`` filters (``ps --filter``); an unknown key or a bad value is InvalidArgument."""
    states: list[str] = []
    names: list[str] = []
    images: list[str] = []
    workflows: list[str] = []
    labels: list[tuple[str, str | None]] = []
    since = 0
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in FILTER_KEYS:
            raise InvalidArgument(f"--filter {item!r}: expected KEY=VALUE with KEY one of {', '.join(FILTER_KEYS)}")
        if not value:
            raise InvalidArgument(f"--filter {item!r}: the value is empty")
        if key == "state":
            if value.upper() not in _STATES:
                raise InvalidArgument(f"--filter {item!r}: a state is one of {', '.join(_STATES)}")
            states.append(value.upper())
        elif key == "name":
            names.append(value)
        elif key == "image":
            images.append(value)
        elif key == "workflow":
            if not re.fullmatch(r"[0-9a-f]{1,32}", value.lower()):
                raise InvalidArgument(f"--filter {item!r}: a workflow id (or prefix) is hexadecimal")
            workflows.append(value.lower())
        elif key == "label":
            k, has_value, v = value.partition("=")
            labels.append((k, v if has_value else None))
        else:
            since = max(since, parse_since(value, what=f"--filter since={value}", now_ns=now_ns))
    return JobFilter(states=tuple(states), names=tuple(names), images=tuple(images), workflows=tuple(workflows),
                     labels=tuple(labels), since_ns=since)


def filter_from_pb(request: Any) -> JobFilter:
    """The filter fields of a ``ListJobsRequest``, checked as ``parse_filters`` checks typed ones."""
    items = [f"state={v}" for v in request.states] + [f"name={v}" for v in request.names]
    items += [f"image={v}" for v in request.images] + [f"workflow={v}" for v in request.workflows]
    items += [f"label={v}" for v in request.labels]
    parsed = parse_filters(items)
    if request.since_ns < 0:
        raise InvalidArgument("since must not be negative")
    return JobFilter(states=parsed.states, names=parsed.names, images=parsed.images, workflows=parsed.workflows,
                     labels=parsed.labels, since_ns=request.since_ns)
