from capsa.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Resources(_message.Message):
    __slots__ = ("max_cpu", "cpu_cores", "max_memory_mb", "max_iobps", "max_pids")
    MAX_CPU_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    MAX_IOBPS_FIELD_NUMBER: _ClassVar[int]
    MAX_PIDS_FIELD_NUMBER: _ClassVar[int]
    max_cpu: int
    cpu_cores: str
    max_memory_mb: int
    max_iobps: int
    max_pids: int
    def __init__(self, max_cpu: _Optional[int] = ..., cpu_cores: _Optional[str] = ..., max_memory_mb: _Optional[int] = ..., max_iobps: _Optional[int] = ..., max_pids: _Optional[int] = ...) -> None: ...

class RunJobRequest(_message.Message):
    __slots__ = ("command", "env", "resources", "workdir", "name", "image", "pull", "entrypoint_set", "user", "seccomp", "network", "volumes", "upload_session", "secret_env", "schedule", "timeout", "capsules", "runtime", "gpus", "request_id", "ports", "restart", "log_max_size", "labels", "auto_remove", "stdin", "tty", "tty_rows", "tty_cols")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SecretEnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PULL_FIELD_NUMBER: _ClassVar[int]
    ENTRYPOINT_SET_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    SECCOMP_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_SESSION_FIELD_NUMBER: _ClassVar[int]
    SECRET_ENV_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    CAPSULES_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    LOG_MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    AUTO_REMOVE_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    TTY_ROWS_FIELD_NUMBER: _ClassVar[int]
    TTY_COLS_FIELD_NUMBER: _ClassVar[int]
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    resources: Resources
    workdir: str
    name: str
    image: str
    pull: str
    entrypoint_set: bool
    user: str
    seccomp: str
    network: str
    volumes: _containers.RepeatedScalarFieldContainer[str]
    upload_session: str
    secret_env: _containers.ScalarMap[str, str]
    schedule: str
    timeout: str
    capsules: _containers.RepeatedScalarFieldContainer[str]
    runtime: str
    gpus: int
    request_id: str
    ports: _containers.RepeatedScalarFieldContainer[str]
    restart: str
    log_max_size: str
    labels: _containers.ScalarMap[str, str]
    auto_remove: bool
    stdin: bool
    tty: bool
    tty_rows: int
    tty_cols: int
    def __init__(self, command: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., workdir: _Optional[str] = ..., name: _Optional[str] = ..., image: _Optional[str] = ..., pull: _Optional[str] = ..., entrypoint_set: _Optional[bool] = ..., user: _Optional[str] = ..., seccomp: _Optional[str] = ..., network: _Optional[str] = ..., volumes: _Optional[_Iterable[str]] = ..., upload_session: _Optional[str] = ..., secret_env: _Optional[_Mapping[str, str]] = ..., schedule: _Optional[str] = ..., timeout: _Optional[str] = ..., capsules: _Optional[_Iterable[str]] = ..., runtime: _Optional[str] = ..., gpus: _Optional[int] = ..., request_id: _Optional[str] = ..., ports: _Optional[_Iterable[str]] = ..., restart: _Optional[str] = ..., log_max_size: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., auto_remove: _Optional[bool] = ..., stdin: _Optional[bool] = ..., tty: _Optional[bool] = ..., tty_rows: _Optional[int] = ..., tty_cols: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "name", "command", "state", "exit_code", "signal", "reason", "created_at_ns", "started_at_ns", "ended_at_ns", "resources", "pid", "ended", "env", "workdir", "hostname", "cgroup", "start_latency_ns", "image", "image_digest", "scheduled_at_ns", "timeout_seconds", "secret_env_keys", "workflow_id", "workflow_job", "seccomp", "network", "ip", "volumes", "gpus", "gpu_devices", "log_incomplete_bytes", "labels", "auto_remove", "exec_events", "ports", "restart_policy", "restart_count", "next_restart_at_ns", "log_dropped_bytes")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
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
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    START_LATENCY_NS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SECRET_ENV_KEYS_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_JOB_FIELD_NUMBER: _ClassVar[int]
    SECCOMP_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    GPU_DEVICES_FIELD_NUMBER: _ClassVar[int]
    LOG_INCOMPLETE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    AUTO_REMOVE_FIELD_NUMBER: _ClassVar[int]
    EXEC_EVENTS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    RESTART_POLICY_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    NEXT_RESTART_AT_NS_FIELD_NUMBER: _ClassVar[int]
    LOG_DROPPED_BYTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    command: _containers.RepeatedScalarFieldContainer[str]
    state: str
    exit_code: int
    signal: int
    reason: str
    created_at_ns: int
    started_at_ns: int
    ended_at_ns: int
    resources: Resources
    pid: int
    ended: bool
    env: _containers.ScalarMap[str, str]
    workdir: str
    hostname: str
    cgroup: str
    start_latency_ns: int
    image: str
    image_digest: str
    scheduled_at_ns: int
    timeout_seconds: float
    secret_env_keys: _containers.RepeatedScalarFieldContainer[str]
    workflow_id: str
    workflow_job: str
    seccomp: str
    network: str
    ip: str
    volumes: _containers.RepeatedScalarFieldContainer[str]
    gpus: int
    gpu_devices: _containers.RepeatedScalarFieldContainer[str]
    log_incomplete_bytes: int
    labels: _containers.ScalarMap[str, str]
    auto_remove: bool
    exec_events: _containers.RepeatedCompositeFieldContainer[ExecEvent]
    ports: _containers.RepeatedScalarFieldContainer[str]
    restart_policy: str
    restart_count: int
    next_restart_at_ns: int
    log_dropped_bytes: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., state: _Optional[str] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., reason: _Optional[str] = ..., created_at_ns: _Optional[int] = ..., started_at_ns: _Optional[int] = ..., ended_at_ns: _Optional[int] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., pid: _Optional[int] = ..., ended: _Optional[bool] = ..., env: _Optional[_Mapping[str, str]] = ..., workdir: _Optional[str] = ..., hostname: _Optional[str] = ..., cgroup: _Optional[str] = ..., start_latency_ns: _Optional[int] = ..., image: _Optional[str] = ..., image_digest: _Optional[str] = ..., scheduled_at_ns: _Optional[int] = ..., timeout_seconds: _Optional[float] = ..., secret_env_keys: _Optional[_Iterable[str]] = ..., workflow_id: _Optional[str] = ..., workflow_job: _Optional[str] = ..., seccomp: _Optional[str] = ..., network: _Optional[str] = ..., ip: _Optional[str] = ..., volumes: _Optional[_Iterable[str]] = ..., gpus: _Optional[int] = ..., gpu_devices: _Optional[_Iterable[str]] = ..., log_incomplete_bytes: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., auto_remove: _Optional[bool] = ..., exec_events: _Optional[_Iterable[_Union[ExecEvent, _Mapping]]] = ..., ports: _Optional[_Iterable[str]] = ..., restart_policy: _Optional[str] = ..., restart_count: _Optional[int] = ..., next_restart_at_ns: _Optional[int] = ..., log_dropped_bytes: _Optional[int] = ...) -> None: ...

class ExecEvent(_message.Message):
    __slots__ = ("who", "command", "at_ns", "user", "ended", "exit_code", "ended_at_ns", "error")
    WHO_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    AT_NS_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    who: str
    command: _containers.RepeatedScalarFieldContainer[str]
    at_ns: int
    user: str
    ended: bool
    exit_code: int
    ended_at_ns: int
    error: str
    def __init__(self, who: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., at_ns: _Optional[int] = ..., user: _Optional[str] = ..., ended: _Optional[bool] = ..., exit_code: _Optional[int] = ..., ended_at_ns: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("all", "limit", "page_token", "states", "names", "images", "workflows", "labels", "since_ns")
    ALL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    all: bool
    limit: int
    page_token: str
    states: _containers.RepeatedScalarFieldContainer[str]
    names: _containers.RepeatedScalarFieldContainer[str]
    images: _containers.RepeatedScalarFieldContainer[str]
    workflows: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.RepeatedScalarFieldContainer[str]
    since_ns: int
    def __init__(self, all: _Optional[bool] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ..., states: _Optional[_Iterable[str]] = ..., names: _Optional[_Iterable[str]] = ..., images: _Optional[_Iterable[str]] = ..., workflows: _Optional[_Iterable[str]] = ..., labels: _Optional[_Iterable[str]] = ..., since_ns: _Optional[int] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StopJobRequest(_message.Message):
    __slots__ = ("id", "grace_seconds")
    ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    grace_seconds: float
    def __init__(self, id: _Optional[str] = ..., grace_seconds: _Optional[float] = ...) -> None: ...

class DeleteJobRequest(_message.Message):
    __slots__ = ("id", "force")
    ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    force: bool
    def __init__(self, id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteJobResponse(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("entry", "data", "done")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    entry: UploadEntry
    data: bytes
    done: bool
    def __init__(self, entry: _Optional[_Union[UploadEntry, _Mapping]] = ..., data: _Optional[bytes] = ..., done: _Optional[bool] = ...) -> None: ...

class UploadEntry(_message.Message):
    __slots__ = ("path", "type", "mode", "size", "link_target")
    PATH_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    LINK_TARGET_FIELD_NUMBER: _ClassVar[int]
    path: str
    type: str
    mode: int
    size: int
    link_target: str
    def __init__(self, path: _Optional[str] = ..., type: _Optional[str] = ..., mode: _Optional[int] = ..., size: _Optional[int] = ..., link_target: _Optional[str] = ...) -> None: ...

class UploadResult(_message.Message):
    __slots__ = ("session", "files", "dirs", "symlinks", "bytes")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    DIRS_FIELD_NUMBER: _ClassVar[int]
    SYMLINKS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    session: str
    files: int
    dirs: int
    symlinks: int
    bytes: int
    def __init__(self, session: _Optional[str] = ..., files: _Optional[int] = ..., dirs: _Optional[int] = ..., symlinks: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class StreamLogsRequest(_message.Message):
    __slots__ = ("id", "follow", "from_seq", "tail", "since_ns", "until_ns", "stream", "final_job")
    ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_NS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    FINAL_JOB_FIELD_NUMBER: _ClassVar[int]
    id: str
    follow: bool
    from_seq: int
    tail: int
    since_ns: int
    until_ns: int
    stream: int
    final_job: bool
    def __init__(self, id: _Optional[str] = ..., follow: _Optional[bool] = ..., from_seq: _Optional[int] = ..., tail: _Optional[int] = ..., since_ns: _Optional[int] = ..., until_ns: _Optional[int] = ..., stream: _Optional[int] = ..., final_job: _Optional[bool] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("seq", "stream", "timestamp_ns", "data", "job")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    seq: int
    stream: int
    timestamp_ns: int
    data: bytes
    job: Job
    def __init__(self, seq: _Optional[int] = ..., stream: _Optional[int] = ..., timestamp_ns: _Optional[int] = ..., data: _Optional[bytes] = ..., job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class VersionInfo(_message.Message):
    __slots__ = ("version", "cgroup_version", "kernel", "snapshotter")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CGROUP_VERSION_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTTER_FIELD_NUMBER: _ClassVar[int]
    version: str
    cgroup_version: str
    kernel: str
    snapshotter: str
    def __init__(self, version: _Optional[str] = ..., cgroup_version: _Optional[str] = ..., kernel: _Optional[str] = ..., snapshotter: _Optional[str] = ...) -> None: ...

class Identity(_message.Message):
    __slots__ = ("common_name", "role")
    COMMON_NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    common_name: str
    role: str
    def __init__(self, common_name: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class QueueInfo(_message.Message):
    __slots__ = ("name", "depth", "in_flight", "limit", "waited_count", "waited_sum_seconds", "wait_p50_seconds", "wait_p99_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    WAITED_COUNT_FIELD_NUMBER: _ClassVar[int]
    WAITED_SUM_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WAIT_P50_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WAIT_P99_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    depth: int
    in_flight: int
    limit: int
    waited_count: int
    waited_sum_seconds: float
    wait_p50_seconds: float
    wait_p99_seconds: float
    def __init__(self, name: _Optional[str] = ..., depth: _Optional[int] = ..., in_flight: _Optional[int] = ..., limit: _Optional[int] = ..., waited_count: _Optional[int] = ..., waited_sum_seconds: _Optional[float] = ..., wait_p50_seconds: _Optional[float] = ..., wait_p99_seconds: _Optional[float] = ...) -> None: ...

class PullInFlight(_message.Message):
    __slots__ = ("ref", "run_id", "state", "phase", "layers_done", "layers_total", "bytes_done", "bytes_total", "started_at_ns")
    REF_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_DONE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    ref: str
    run_id: str
    state: str
    phase: str
    layers_done: int
    layers_total: int
    bytes_done: int
    bytes_total: int
    started_at_ns: int
    def __init__(self, ref: _Optional[str] = ..., run_id: _Optional[str] = ..., state: _Optional[str] = ..., phase: _Optional[str] = ..., layers_done: _Optional[int] = ..., layers_total: _Optional[int] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., started_at_ns: _Optional[int] = ...) -> None: ...

class Pipeline(_message.Message):
    __slots__ = ("queues", "pulls")
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    PULLS_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedCompositeFieldContainer[QueueInfo]
    pulls: _containers.RepeatedCompositeFieldContainer[PullInFlight]
    def __init__(self, queues: _Optional[_Iterable[_Union[QueueInfo, _Mapping]]] = ..., pulls: _Optional[_Iterable[_Union[PullInFlight, _Mapping]]] = ...) -> None: ...
