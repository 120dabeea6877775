"""Jobs: submit, schedule, start, cancel, stop, delete and follow them; what they borrow from the node.

The daemon (``capsa.daemon``) builds the service with the resources jobs may borrow::

    jobs = JobService(db, home, supervisor, resources=(ImageRootResource(images), NetworkResource(networks), ...))
    jobs.attach_supervisor()                      # subscribe to exits, then reconcile with the supervisor
    job = jobs.run(RunRequest(command=("echo", "hi"), request_id="cli:6f1c..."))   # a retry returns this job
    page = jobs.page(all=True, limit=50)          # newest first; page.next_page_token for the next one
    jobs.stop(job.id)                             # or cancel() a SCHEDULED job, delete() an ended one

Modules: :mod:`.model` (requests, jobs, the table), :mod:`.store` (every statement on the table),
:mod:`.resources` (the JobResource contract and Grant), :mod:`.requests` (request checks and the
spec for stage two), :mod:`.schedule` (durations, schedules, the timer thread), :mod:`.secrets`
and :mod:`.uploads`.
"""

from capsa.jobs.model import ACTIVE_STATES, LISTED_STATES, Job, JobPage, JobState, Resources, RunRequest
from capsa.jobs.resources import Grant, JobResource
from capsa.jobs.schedule import Scheduler, parse_duration, parse_start_time
from capsa.jobs.secrets import SecretBox
from capsa.jobs.service import JobService
from capsa.jobs.store import JobStore
from capsa.jobs.uploads import UploadLimits

__all__ = [
    "ACTIVE_STATES",
    "LISTED_STATES",
    "Grant",
    "Job",
    "JobPage",
    "JobResource",
    "JobService",
    "JobState",
    "JobStore",
    "Resources",
    "RunRequest",
    "Scheduler",
    "SecretBox",
    "UploadLimits",
    "parse_duration",
    "parse_start_time",
]
