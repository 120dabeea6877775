"""ListJobs pages built from each ended job's message as serialized once.

`capsa ps -a` asks for the newest 1,000 jobs; during a burst a dashboard or a script asks
every few tens of milliseconds. Decoding 1,000 rows (six JSON columns each) and building
1,000 ``pb.Job`` messages took 40-100 ms of the daemon's one interpreter lock per call, which
starved the very submissions the caller was watching (docs/adr/0017-burst-submissions.md).

An ended job's message changes only when its row does (every UPDATE bumps the row's ``rev``,
capsa.jobs.store) or its restart bookkeeping does (kept in its own table, so it is part of
the key). A page is therefore read as (id, rev, state) off the index, the rows that changed
since are read and encoded, and the response is the concatenation of the kept encodings,
parsed once by protobuf's C code. Live jobs are always built fresh: their published ports
come from elsewhere and they are few.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

from google.protobuf.internal.encoder import _VarintBytes

from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from capsa.jobs.model import Job, JobState
from capsa.jobs.service import JobService
from capsa.selectors import JobFilter

__all__ = ["JobList"]

_JOBS_TAG = b"\x0a"    # ListJobsResponse.jobs: field 1, length-delimited
_TOKEN_TAG = b"\x12"   # ListJobsResponse.next_page_token: field 2, length-delimited
_ENDED = frozenset(s.value for s in JobState if s.ended)


class JobList:
    """Builds ListJobs responses; ``to_pb(job, ports)`` is the one Job -> pb.Job conversion."""

    def __init__(self, jobs: JobService, to_pb: Callable[[Job, Sequence[str]], pb.Job],
                 published: Callable[[str | None], Mapping[str, Sequence[object]]] | None = None, *,
                 max_entries: int = 20_000) -> None:
        self.jobs = jobs
        self.to_pb = to_pb
        self.published = published
        self.max_entries = max_entries
        self._lock = threading.Lock()
        # job id -> ((rev, restart info), the field's bytes: tag, length, message). Insertion order is
        # creation order near enough (new jobs end last), so the oldest entries are dropped first.
        self._kept: dict[str, tuple[tuple[int, object], bytes]] = {}

    def page(self, *, all: bool, limit: int, page_token: str, filter: JobFilter | None) -> pb.ListJobsResponse:
        return pb.ListJobsResponse.FromString(self.page_bytes(all=all, limit=limit, page_token=page_token,
                                                              filter=filter))

    def page_bytes(self, *, all: bool, limit: int, page_token: str, filter: JobFilter | None) -> bytes:
        """:meth:`page` serialized: what the ListJobs servicer sends as it is (capsa.api.wire.Encoded)."""
        entries, next_token = self.jobs.page_entries(all=all, limit=limit, page_token=page_token, filter=filter)
        ids = [entry[0] for entry in entries]
        restarts = self.jobs.restart_info(ids)
        parts: dict[str, bytes] = {}
        missing: list[str] = []
        with self._lock:
            kept_now = self._kept
            for job_id, rev, state, _created in entries:
                kept = kept_now.get(job_id) if state in _ENDED else None
                if kept is not None and kept[0] == (rev, restarts.get(job_id)):
                    parts[job_id] = kept[1]
                else:
                    missing.append(job_id)
        if missing:
            fresh = self.jobs.get_many(missing)
            live = [job for _rev, job in fresh.values() if not job.state.ended]
            ports = self.published(None) if live and self.published else {}
            keep: dict[str, tuple[tuple[int, object], bytes]] = {}
            for job_id, (rev, job) in fresh.items():
                ended = job.state.ended
                data = self.to_pb(job, [] if ended else [str(p) for p in ports.get(job_id, ())]).SerializeToString()
                part = _JOBS_TAG + _VarintBytes(len(data)) + data
                parts[job_id] = part
                if ended:
                    info = job.restart_policy, job.restart_count, job.next_restart_ns
                    keep[job_id] = ((rev, info if job.restart_policy else None), part)
            if keep:
                self._keep(keep)
        # Ids missing from both were deleted between the two reads: the page simply lacks them.
        body = b"".join(parts[i] for i in ids if i in parts)
        if next_token:
            token = next_token.encode()
            body += _TOKEN_TAG + _VarintBytes(len(token)) + token
        return body

    def _keep(self, entries: dict[str, tuple[tuple[int, object], bytes]]) -> None:
        with self._lock:
            for job_id, value in entries.items():
                self._kept.pop(job_id, None)   # re-inserted at the end: kept longest
                self._kept[job_id] = value
            over = len(self._kept) - self.max_entries
            if over > 0:
                for job_id in list(self._kept)[:over + self.max_entries // 10]:
                    del self._kept[job_id]
