"""Running jobs: the supervisor and its client, the zygote, stage two, cgroups, live mounts.

The daemon talks to the supervisor through :class:`SupervisorClient` (``ensure_supervisor`` starts
one if needed); what crosses between them is typed (:class:`JobSpec` in, :class:`JobRecord` and
:class:`ExitEvent` out).
"""

from capsa.runtime.client import SupervisorClient, ensure_supervisor
from capsa.runtime.protocol import ExitEvent, JobRecord, ProcState
from capsa.runtime.spec import BindSpec, DeviceSpec, JobSpec, MountSpec, ResourceSpec

__all__ = [
    "BindSpec",
    "DeviceSpec",
    "ExitEvent",
    "JobRecord",
    "JobSpec",
    "MountSpec",
    "ProcState",
    "ResourceSpec",
    "SupervisorClient",
    "ensure_supervisor",
]
