from capsa.v1 import jobs_pb2 as _jobs_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Node(_message.Message):
    __slots__ = ("name", "address", "state", "cpus", "memory_mb", "gpus", "labels", "snapshotter", "images", "capsules", "jobs", "max_jobs", "registered_at_ns")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTTER_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    CAPSULES_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    MAX_JOBS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    state: str
    cpus: int
    memory_mb: int
    gpus: int
    labels: _containers.ScalarMap[str, str]
    snapshotter: str
    images: _containers.RepeatedScalarFieldContainer[str]
    capsules: _containers.RepeatedScalarFieldContainer[str]
    jobs: int
    max_jobs: int
    registered_at_ns: int
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[str] = ..., cpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., gpus: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., snapshotter: _Optional[str] = ..., images: _Optional[_Iterable[str]] = ..., capsules: _Optional[_Iterable[str]] = ..., jobs: _Optional[int] = ..., max_jobs: _Optional[int] = ..., registered_at_ns: _Optional[int] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class SubmitPoolJobRequest(_message.Message):
    __slots__ = ("job", "constraints", "restart", "max_restarts")
    class ConstraintsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    MAX_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    job: _jobs_pb2.RunJobRequest
    constraints: _containers.ScalarMap[str, str]
    restart: str
    max_restarts: int
    def __init__(self, job: _Optional[_Union[_jobs_pb2.RunJobRequest, _Mapping]] = ..., constraints: _Optional[_Mapping[str, str]] = ..., restart: _Optional[str] = ..., max_restarts: _Optional[int] = ...) -> None: ...

class PoolJob(_message.Message):
    __slots__ = ("id", "name", "command", "state", "node", "local_id", "attempt", "restart", "reason", "exit_code", "ended", "constraints", "history", "workflow_id", "workflow_job", "submitted_at_ns", "placed_at_ns", "started_at_ns", "ended_at_ns", "image", "local", "not_before_ns")
    class ConstraintsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_JOB_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    PLACED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_NS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    command: _containers.RepeatedScalarFieldContainer[str]
    state: str
    node: str
    local_id: str
    attempt: int
    restart: str
    reason: str
    exit_code: int
    ended: bool
    constraints: _containers.ScalarMap[str, str]
    history: _containers.RepeatedScalarFieldContainer[str]
    workflow_id: str
    workflow_job: str
    submitted_at_ns: int
    placed_at_ns: int
    started_at_ns: int
    ended_at_ns: int
    image: str
    local: _jobs_pb2.Job
    not_before_ns: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., state: _Optional[str] = ..., node: _Optional[str] = ..., local_id: _Optional[str] = ..., attempt: _Optional[int] = ..., restart: _Optional[str] = ..., reason: _Optional[str] = ..., exit_code: _Optional[int] = ..., ended: _Optional[bool] = ..., constraints: _Optional[_Mapping[str, str]] = ..., history: _Optional[_Iterable[str]] = ..., workflow_id: _Optional[str] = ..., workflow_job: _Optional[str] = ..., submitted_at_ns: _Optional[int] = ..., placed_at_ns: _Optional[int] = ..., started_at_ns: _Optional[int] = ..., ended_at_ns: _Optional[int] = ..., image: _Optional[str] = ..., local: _Optional[_Union[_jobs_pb2.Job, _Mapping]] = ..., not_before_ns: _Optional[int] = ...) -> None: ...

class ListPoolJobsRequest(_message.Message):
    __slots__ = ("all",)
    ALL_FIELD_NUMBER: _ClassVar[int]
    all: bool
    def __init__(self, all: _Optional[bool] = ...) -> None: ...

class ListPoolJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[PoolJob]
    def __init__(self, jobs: _Optional[_Iterable[_Union[PoolJob, _Mapping]]] = ...) -> None: ...

class GetPoolJobRequest(_message.Message):
    __slots__ = ("id", "local")
    ID_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    id: str
    local: bool
    def __init__(self, id: _Optional[str] = ..., local: _Optional[bool] = ...) -> None: ...

class StopPoolJobRequest(_message.Message):
    __slots__ = ("id", "grace_seconds")
    ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    grace_seconds: float
    def __init__(self, id: _Optional[str] = ..., grace_seconds: _Optional[float] = ...) -> None: ...

class PoolLogsRequest(_message.Message):
    __slots__ = ("id", "follow", "from_seq")
    ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    id: str
    follow: bool
    from_seq: int
    def __init__(self, id: _Optional[str] = ..., follow: _Optional[bool] = ..., from_seq: _Optional[int] = ...) -> None: ...

class SubmitPoolWorkflowRequest(_message.Message):
    __slots__ = ("yaml", "base_dir", "constraints")
    class ConstraintsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    YAML_FIELD_NUMBER: _ClassVar[int]
    BASE_DIR_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    yaml: str
    base_dir: str
    constraints: _containers.ScalarMap[str, str]
    def __init__(self, yaml: _Optional[str] = ..., base_dir: _Optional[str] = ..., constraints: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PoolWorkflowJob(_message.Message):
    __slots__ = ("name", "job_id", "state", "node", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    job_id: str
    state: str
    node: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., job_id: _Optional[str] = ..., state: _Optional[str] = ..., node: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PoolWorkflow(_message.Message):
    __slots__ = ("id", "name", "state", "jobs", "submitted_at_ns", "ended_at_ns")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    state: str
    jobs: _containers.RepeatedCompositeFieldContainer[PoolWorkflowJob]
    submitted_at_ns: int
    ended_at_ns: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[str] = ..., jobs: _Optional[_Iterable[_Union[PoolWorkflowJob, _Mapping]]] = ..., submitted_at_ns: _Optional[int] = ..., ended_at_ns: _Optional[int] = ...) -> None: ...

class GetPoolWorkflowRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class NodeStopJobRequest(_message.Message):
    __slots__ = ("id", "grace_seconds", "pool_job_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    POOL_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    grace_seconds: float
    pool_job_id: str
    def __init__(self, id: _Optional[str] = ..., grace_seconds: _Optional[float] = ..., pool_job_id: _Optional[str] = ...) -> None: ...

class NodeStopJobResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...

class NodeLogsRequest(_message.Message):
    __slots__ = ("id", "follow", "from_seq", "pool_job_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    POOL_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    follow: bool
    from_seq: int
    pool_job_id: str
    def __init__(self, id: _Optional[str] = ..., follow: _Optional[bool] = ..., from_seq: _Optional[int] = ..., pool_job_id: _Optional[str] = ...) -> None: ...

class NodeGetJobRequest(_message.Message):
    __slots__ = ("id", "pool_job_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    POOL_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    pool_job_id: str
    def __init__(self, id: _Optional[str] = ..., pool_job_id: _Optional[str] = ...) -> None: ...

class RemovePoolJobsRequest(_message.Message):
    __slots__ = ("ids", "force")
    IDS_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    force: bool
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., force: _Optional[bool] = ...) -> None: ...

class RemovePoolJobsResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, removed: _Optional[_Iterable[str]] = ...) -> None: ...

class PrunePoolRequest(_message.Message):
    __slots__ = ("older_than_seconds", "dry_run")
    OLDER_THAN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    older_than_seconds: float
    dry_run: bool
    def __init__(self, older_than_seconds: _Optional[float] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class PrunePoolResponse(_message.Message):
    __slots__ = ("job_ids", "workflow_ids")
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_IDS_FIELD_NUMBER: _ClassVar[int]
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    workflow_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_ids: _Optional[_Iterable[str]] = ..., workflow_ids: _Optional[_Iterable[str]] = ...) -> None: ...
