"""``capsa run --rm``: an ended job is removed after a short linger, or once its last attached reader
lets go, whichever is later, so the `capsa run --rm` about to attach still reads its output and exit.

Removal goes through :meth:`capsa.jobs.service.JobService.remove` like `capsa rm`; this module only
decides when. Readers (`logs -f`, attach) take :meth:`AutoRemoval.hold` for as long as they read.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

from capsa.errors import CapsaError, NotFound
from capsa.jobs.model import Job

__all__ = ["AutoRemoval"]

log = logging.getLogger("capsa.jobs")


class AutoRemoval:
    def __init__(self, get: Callable[[str], Job], remove: Callable[[str], object], *, linger_s: float = 5.0) -> None:
        self._get = get
        self._remove = remove
        self.linger_s = linger_s
        self._lock = threading.Lock()
        self._holds: dict[str, int] = {}     # readers per job
        self._due: set[str] = set()          # lingered out while held: removed when the last reader lets go

    @contextlib.contextmanager
    def hold(self, job_id: str) -> Iterator[None]:
        """Keep an --rm job while an attached reader needs it (its removal waits for the last one)."""
        with self._lock:
            self._holds[job_id] = self._holds.get(job_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._holds[job_id] -= 1
                free = not self._holds[job_id]
                if free:
                    del self._holds[job_id]
                due = free and job_id in self._due
            if due:   # on a thread of its own: the last reader may be an async stream on the event loop
                self.later(job_id, 0.0)

    def ended(self, job_id: str) -> None:
        """``job_id`` (an --rm job) ended just now: remove it once the linger is over."""
        self.later(job_id, self.linger_s)

    def later(self, job_id: str, delay_s: float) -> None:
        timer = threading.Timer(delay_s, self.now, (job_id,))
        timer.daemon = True
        timer.start()

    def now(self, job_id: str) -> None:
        """Remove ``job_id`` unless a reader holds it (then its last reader's release does)."""
        with self._lock:
            if self._holds.get(job_id):
                self._due.add(job_id)
                return
            self._due.discard(job_id)
        try:
            job = self._get(job_id)
            if job.auto_remove and job.state.ended:
                self._remove(job_id)
        except CapsaError as exc:
            if not isinstance(exc, NotFound):   # removed already (capsa rm) is fine
                log.warning("removing --rm job %s failed: %s", job_id, exc)
