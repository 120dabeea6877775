"""The one table mapping every RPC to the least role allowed to call it.

Roles are cumulative (reader < developer < maintainer < admin); ``node`` stands apart and only
opens the node-to-node RPCs of the cluster. A method that is
missing here is refused for everyone: tests/unit/api/test_roles.py checks that
every RPC of every service is listed, and calls each one with each role.
"""

from __future__ import annotations

from capsa.pki import NodeRole, Principal, Role

__all__ = ["RPC_ROLES", "required_role"]

RPC_ROLES: dict[str, Principal] = {
    # JobService
    "/capsa.v1.JobService/RunJob": Role.DEVELOPER,
    "/capsa.v1.JobService/GetJob": Role.READER,
    "/capsa.v1.JobService/ListJobs": Role.READER,
    "/capsa.v1.JobService/StopJob": Role.DEVELOPER,
    "/capsa.v1.JobService/DeleteJob": Role.DEVELOPER,
    "/capsa.v1.JobService/StreamLogs": Role.READER,
    "/capsa.v1.JobService/UploadFiles": Role.DEVELOPER,
    "/capsa.v1.JobService/CancelJob": Role.DEVELOPER,
    # InteractiveService: a process inside a running job is the job owner's to run (ADR-0013)
    "/capsa.v1.InteractiveService/Exec": Role.DEVELOPER,
    # ...and writing to a -i/-t job's stdin (Attach): as good as exec with a shell as PID 1
    "/capsa.v1.InteractiveService/Attach": Role.DEVELOPER,
    "/capsa.v1.InteractiveService/ExecStream": Role.DEVELOPER,
    # FileService (capsa cp): reading a job's files is as sensitive as writing them (secrets land in
    # /work), so readers get neither direction, like exec/attach.
    "/capsa.v1.FileService/CopyOut": Role.DEVELOPER,
    "/capsa.v1.FileService/CopyIn": Role.DEVELOPER,
    "/capsa.v1.FileService/FastPath": Role.DEVELOPER,
    # MetricsService
    "/capsa.v1.MetricsService/MetricsStream": Role.READER,
    "/capsa.v1.MetricsService/GetNodeStats": Role.READER,
    # ImageService
    "/capsa.v1.ImageService/PullImage": Role.MAINTAINER,
    "/capsa.v1.ImageService/ListImages": Role.READER,
    "/capsa.v1.ImageService/InspectImage": Role.READER,
    "/capsa.v1.ImageService/RemoveImage": Role.MAINTAINER,
    "/capsa.v1.ImageService/PruneImages": Role.ADMIN,
    "/capsa.v1.ImageService/ImageHistory": Role.READER,
    "/capsa.v1.ImageService/VerifyImages": Role.MAINTAINER,
    "/capsa.v1.ImageService/BackupDatabase": Role.ADMIN,
    # Tag, push and load change what the node (or a registry) holds, like a pull; save hands out an image's
    # files, which a developer can already read by running it.
    "/capsa.v1.ImageService/TagImage": Role.MAINTAINER,
    "/capsa.v1.ImageService/PushImage": Role.MAINTAINER,
    "/capsa.v1.ImageService/LoadImage": Role.MAINTAINER,
    "/capsa.v1.ImageService/SaveImage": Role.DEVELOPER,
    # WorkflowService
    "/capsa.v1.WorkflowService/SubmitWorkflow": Role.DEVELOPER,
    "/capsa.v1.WorkflowService/ListWorkflows": Role.READER,
    "/capsa.v1.WorkflowService/GetWorkflow": Role.READER,
    "/capsa.v1.WorkflowService/CancelWorkflow": Role.DEVELOPER,
    # NetworkService / VolumeService: shared node resources
    "/capsa.v1.NetworkService/CreateNetwork": Role.MAINTAINER,
    "/capsa.v1.NetworkService/ListNetworks": Role.READER,
    "/capsa.v1.NetworkService/RemoveNetwork": Role.ADMIN,
    "/capsa.v1.VolumeService/CreateVolume": Role.MAINTAINER,
    "/capsa.v1.VolumeService/ListVolumes": Role.READER,
    "/capsa.v1.VolumeService/RemoveVolume": Role.ADMIN,
    # CapsuleService: maintainers manage the store, developers mount into jobs, readers look
    "/capsa.v1.CapsuleService/Create": Role.MAINTAINER,
    "/capsa.v1.CapsuleService/List": Role.READER,
    "/capsa.v1.CapsuleService/Inspect": Role.READER,
    "/capsa.v1.CapsuleService/Remove": Role.MAINTAINER,
    "/capsa.v1.CapsuleService/Pin": Role.MAINTAINER,
    "/capsa.v1.CapsuleService/Unpin": Role.MAINTAINER,
    "/capsa.v1.CapsuleService/Attach": Role.DEVELOPER,
    "/capsa.v1.CapsuleService/Swap": Role.DEVELOPER,
    "/capsa.v1.CapsuleService/Detach": Role.DEVELOPER,
    "/capsa.v1.CapsuleService/Push": Role.MAINTAINER,
    "/capsa.v1.CapsuleService/Pull": Role.MAINTAINER,
    "/capsa.v1.CapsuleService/Gc": Role.MAINTAINER,
    "/capsa.v1.CapsuleService/Verify": Role.MAINTAINER,
    # RuntimeService: maintainers build and remove runtimes (node-wide), readers look
    "/capsa.v1.RuntimeService/BuildRuntime": Role.MAINTAINER,
    "/capsa.v1.RuntimeService/ListRuntimes": Role.READER,
    "/capsa.v1.RuntimeService/InspectRuntime": Role.READER,
    "/capsa.v1.RuntimeService/RemoveRuntime": Role.MAINTAINER,
    # HousekeepingService: prune removes other users' ended jobs and node-wide history
    "/capsa.v1.HousekeepingService/Prune": Role.MAINTAINER,
    # NodeService
    # EventService: lifecycle events, read-only
    "/capsa.v1.EventService/Events": Role.READER,
    "/capsa.v1.NodeService/GetVersion": Role.READER,
    "/capsa.v1.NodeService/WhoAmI": Role.READER,
    "/capsa.v1.NodeService/GetPipeline": Role.READER,
    # ClusterService: the pool as users see it, through any node (roles as for local jobs)
    "/capsa.v1.ClusterService/ListNodes": Role.READER,
    "/capsa.v1.ClusterService/SubmitPoolJob": Role.DEVELOPER,
    "/capsa.v1.ClusterService/ListPoolJobs": Role.READER,
    "/capsa.v1.ClusterService/GetPoolJob": Role.READER,
    "/capsa.v1.ClusterService/StopPoolJob": Role.DEVELOPER,
    "/capsa.v1.ClusterService/PoolLogs": Role.READER,
    "/capsa.v1.ClusterService/SubmitPoolWorkflow": Role.DEVELOPER,
    "/capsa.v1.ClusterService/GetPoolWorkflow": Role.READER,
    "/capsa.v1.ClusterService/RemovePoolJobs": Role.DEVELOPER,
    "/capsa.v1.ClusterService/PrunePool": Role.MAINTAINER,
    # ...and node to node: the serving node has checked the user's role; the owner checks it is a node
    "/capsa.v1.ClusterService/NodeStopJob": NodeRole.NODE,
    "/capsa.v1.ClusterService/NodeLogs": NodeRole.NODE,
    "/capsa.v1.ClusterService/NodeGetJob": NodeRole.NODE,
}


def required_role(method: str) -> Principal | None:
    return RPC_ROLES.get(method)
