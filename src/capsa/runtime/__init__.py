"""Running jobs: the supervisor and its client, the zygote, stage two, cgroups, live mounts.

The daemon talks to the supervisor through :class:`SupervisorClient` (``ensure_supervisor`` starts
one if needed); what crosses between them is typed (:class:`JobSpec` in, :class:`JobRecord` and
:class:`ExitEvent` out).
"""

from typing import TYPE_CHECKING, Any

from capsa.runtime.protocol import ExitEvent, JobRecord, ProcState
from capsa.runtime.spec import BindSpec, DeviceSpec, JobSpec, MountSpec, ResourceSpec

if TYPE_CHECKING:
    from capsa.runtime.client import SupervisorClient, ensure_supervisor


def __getattr__(name: str) -> Any:
    # The daemon's side loads on first use: the zygote and the supervisor import this package too, and
    # every module the zygote holds makes each job's execve slower (ADR-0018).
    if name in ("SupervisorClient", "ensure_supervisor"):
        from capsa.runtime import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
