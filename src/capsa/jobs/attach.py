"""``capsa run -i/-t`` and ``capsa attach``: a client's stdin and terminal size into a running job.

The job's stdin pipe or terminal master is held by the supervisor (runtime/supervisor/_interactive.py),
so nothing here owns a descriptor: an attachment is the job's log directory (its output, read
like ``capsa logs -f``, lossless and in order) plus writes and resizes forwarded to the supervisor.
Detaching is just ending the call; the job does not notice. See ADR-0013.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from capsa.errors import FailedPrecondition, NotFound
from capsa.jobs.model import Job, JobState
from capsa.jobs.service import JobService
from capsa.logs.select import seq_since

__all__ = ["Attachment", "JobAttach"]

# While a full stdin pipe (or terminal) takes nothing, the write is retried this often.
_RETRY_S = 0.005


@dataclass(frozen=True)
class Attachment:
    job_id: str
    log_dir: Path
    tty: bool
    next_seq: int   # the first log record written after the attachment was made
    ended: bool = False   # only with ``allow_ended``: the job already ended (its log is all there is)


class JobAttach:
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs

    def open(self, id_or_prefix: str, *, allow_ended: bool = False) -> Attachment:
        """Check the job runs and takes input (NotFound, FailedPrecondition otherwise).

        ``allow_ended`` (``capsa run -i/-t``, which attaches right after the start): a job that
        already ended — a quick command — is no error; its whole log and its exit are returned.
        """
        job = self.jobs.get(id_or_prefix)
        log_dir = self.jobs.jobs_dir / job.id / "logs"
        if allow_ended and job.state.ended:
            return Attachment(job.id, log_dir, False, 1, ended=True)
        _require_running(job)
        next_seq = seq_since(log_dir, 2**63 - 1)   # taken before the check: nothing after it is missed
        try:
            reply = self.jobs.supervisor.input(job.id)
        except (FailedPrecondition, NotFound) as exc:
            # NotFound: the supervisor already forgot the job (it ended and its exit was handed over)
            # while its row still says RUNNING, until the daemon records that exit.
            if allow_ended:   # started with -i/-t by the caller itself: the one reason left is its end
                return Attachment(job.id, log_dir, False, 1, ended=True)
            _require_running(self.jobs.get(job.id))   # it ended meanwhile: say that, not the supervisor's words
            if isinstance(exc, NotFound):
                raise FailedPrecondition(f"job {job.short_id} has ended: there is nothing to attach to") from exc
            raise
        return Attachment(job.id, log_dir, reply.tty, next_seq)

    def write(self, job_id: str, data: bytes, *, eof: bool = False, exec_id: int = 0,
              stop: Callable[[], bool] = lambda: False) -> bool:
        """Write all of ``data`` (waiting while the job does not read); False once its stdin is closed.

        ``exec_id``: to a streamed exec in the job (``capsa exec -i/-t``) instead of the job itself.
        """
        view = memoryview(data)
        while True:
            reply = self.jobs.supervisor.input(job_id, bytes(view[:1 << 16]), eof=eof and len(view) <= 1 << 16,
                                               exec_id=exec_id)
            view = view[reply.accepted:]
            if reply.closed:
                return False
            if not view:
                return True
            if reply.accepted == 0:
                if stop():
                    return True
                time.sleep(_RETRY_S)

    def resize(self, job_id: str, rows: int, cols: int, *, exec_id: int = 0) -> None:
        self.jobs.supervisor.resize(job_id, rows, cols, exec_id=exec_id)


def _require_running(job: Job) -> None:
    if job.state.ended:
        raise FailedPrecondition(f"job {job.short_id} has ended ({job.state.value}): there is nothing to attach to")
    if job.state != JobState.RUNNING:
        raise FailedPrecondition(f"job {job.short_id} is {job.state.value}, not RUNNING: attach needs a running job")
