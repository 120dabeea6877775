"""Filtering, sorting and paging the jobs table, server-side, over one ListJobs result.

Filters are a registry (``FILTERS``): a query parameter name, a label for the form and a function
turning the typed text into a predicate. Labels are registered only when the daemon's ``Job``
message has a ``labels`` field, so when the labels issue lands the filter appears with no change
here. Each predicate is built once per request and then applied to every job: at 5,000 jobs the
whole filter + sort + slice stays in the low milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from capsa.api.gen.capsa.v1 import jobs_pb2 as pb

__all__ = ["FILTERS", "PAGE_SIZES", "SORTS", "STATES", "JobQuery", "Page", "job_labels", "select"]

STATES = ("SCHEDULED", "PENDING", "RUNNING", "COMPLETED", "FAILED", "STOPPED", "CANCELED", "TIMEOUT")
PAGE_SIZES = (25, 50, 100, 200)
Predicate = Callable[[pb.Job], bool]


def _has_field(name: str) -> bool:
    return name in pb.Job.DESCRIPTOR.fields_by_name


def job_labels(job: pb.Job) -> dict[str, str]:
    """The job's labels, or none when this daemon's API has no labels yet."""
    return dict(job.labels) if _has_field("labels") else {}  # type: ignore[attr-defined]


def _contains(getter: Callable[[pb.Job], str]) -> Callable[[str], Predicate]:
    def build(text: str) -> Predicate:
        needle = text.casefold()
        return lambda job: needle in getter(job).casefold()
    return build


def _state(text: str) -> Predicate:
    wanted = {s.strip().upper() for s in text.split(",") if s.strip()}
    if "ACTIVE" in wanted:   # the CLI's default view: what `capsa ps` shows without -a
        wanted |= {"SCHEDULED", "PENDING", "RUNNING"}
    return lambda job: job.state in wanted


def _label(text: str) -> Predicate:
    """``key`` (present) or ``key=value`` (equal); several separated by commas must all hold."""
    terms = []
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if key:
            terms.append((key.strip(), value.strip() if sep else None))

    def check(job: pb.Job) -> bool:
        labels = job_labels(job)
        return all(k in labels and (v is None or labels[k] == v) for k, v in terms)
    return check


def _name(job: pb.Job) -> str:
    return job.name


@dataclass(frozen=True)
class Filter:
    key: str
    label: str
    build: Callable[[str], Predicate]
    placeholder: str = ""


def _filters() -> dict[str, Filter]:
    found = [
        Filter("state", "State", _state),
        Filter("name", "Name", _contains(_name), "substring"),
        Filter("image", "Image", _contains(lambda j: j.image), "substring"),
        Filter("command", "Command", _contains(lambda j: " ".join(j.command)), "substring"),
        Filter("workflow", "Workflow", _contains(lambda j: j.workflow_id), "id prefix"),
    ]
    if _has_field("labels"):
        found.append(Filter("label", "Label", _label, "key=value,key2"))
    return {f.key: f for f in found}


FILTERS = _filters()


def _duration(job: pb.Job) -> int:
    if not job.started_at_ns:
        return -1
    return (job.ended_at_ns or job.started_at_ns) - job.started_at_ns


SORTS: dict[str, Callable[[pb.Job], Any]] = {
    "created": lambda j: j.created_at_ns,
    "name": lambda j: (j.name.casefold(), j.created_at_ns),
    "state": lambda j: (j.state, j.created_at_ns),
    "id": lambda j: j.id,
    "image": lambda j: (j.image, j.created_at_ns),
    "exit": lambda j: (j.ended, j.exit_code, j.created_at_ns),
    "duration": _duration,
}


@dataclass(frozen=True)
class JobQuery:
    filters: dict[str, str] = field(default_factory=dict)
    sort: str = "created"
    descending: bool = True
    page: int = 1
    per_page: int = 50

    @classmethod
    def parse(cls, params: Any) -> JobQuery:
        """From query parameters; unknown or malformed values fall back to defaults, never an error page."""
        filters = {k: str(params.get(k, "")).strip() for k in FILTERS if str(params.get(k, "")).strip()}
        sort = params.get("sort", "created")
        order = params.get("order", "desc")
        try:
            page = max(1, int(params.get("page", 1)))
        except ValueError:
            page = 1
        try:
            per_page = int(params.get("per_page", 50))
        except ValueError:
            per_page = 50
        return cls(filters=filters, sort=sort if sort in SORTS else "created", descending=order != "asc",
                   page=page, per_page=per_page if per_page in PAGE_SIZES else 50)

    def params(self, **changes: Any) -> dict[str, str]:
        """Query parameters for a link to this view with ``changes`` (e.g. another page or sort)."""
        values: dict[str, Any] = {**self.filters, "sort": self.sort, "order": "desc" if self.descending else "asc",
                                  "page": self.page, "per_page": self.per_page}
        values.update(changes)
        return {k: str(v) for k, v in values.items() if v not in ("", None)}


@dataclass(frozen=True)
class Page:
    jobs: list[pb.Job]
    total: int          # jobs matching the filters
    all_count: int      # jobs on the node
    page: int
    pages: int
    query: JobQuery


def select(jobs: Iterable[pb.Job], query: JobQuery) -> Page:
    everything = jobs if isinstance(jobs, list) else list(jobs)
    predicates = [FILTERS[k].build(v) for k, v in query.filters.items()]
    matching = [j for j in everything if all(p(j) for p in predicates)] if predicates else list(everything)
    matching.sort(key=SORTS[query.sort], reverse=query.descending)
    pages = max(1, -(-len(matching) // query.per_page))
    page = min(query.page, pages)
    start = (page - 1) * query.per_page
    return Page(jobs=matching[start:start + query.per_page], total=len(matching), all_count=len(everything),
                page=page, pages=pages, query=query)
