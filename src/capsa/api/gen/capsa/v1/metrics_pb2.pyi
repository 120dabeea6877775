from capsa.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MetricsStreamRequest(_message.Message):
    __slots__ = ("id", "follow", "history")
    ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    id: str
    follow: bool
    history: bool
    def __init__(self, id: _Optional[str] = ..., follow: _Optional[bool] = ..., history: _Optional[bool] = ...) -> None: ...

class JobMetrics(_message.Message):
    __slots__ = ("job_id", "name", "timestamp_ns", "cpu_usage_ns", "cpu_percent", "memory_current_bytes", "memory_peak_bytes", "io_read_bytes", "io_write_bytes", "pids", "net_rx_bytes", "net_tx_bytes", "cpu_throttled_ns", "oom_kills")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    CPU_USAGE_NS_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_CURRENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PEAK_BYTES_FIELD_NUMBER: _ClassVar[int]
    IO_READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    IO_WRITE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    NET_RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    NET_TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_THROTTLED_NS_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    timestamp_ns: int
    cpu_usage_ns: int
    cpu_percent: float
    memory_current_bytes: int
    memory_peak_bytes: int
    io_read_bytes: int
    io_write_bytes: int
    pids: int
    net_rx_bytes: int
    net_tx_bytes: int
    cpu_throttled_ns: int
    oom_kills: int
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., timestamp_ns: _Optional[int] = ..., cpu_usage_ns: _Optional[int] = ..., cpu_percent: _Optional[float] = ..., memory_current_bytes: _Optional[int] = ..., memory_peak_bytes: _Optional[int] = ..., io_read_bytes: _Optional[int] = ..., io_write_bytes: _Optional[int] = ..., pids: _Optional[int] = ..., net_rx_bytes: _Optional[int] = ..., net_tx_bytes: _Optional[int] = ..., cpu_throttled_ns: _Optional[int] = ..., oom_kills: _Optional[int] = ...) -> None: ...

class NodeStats(_message.Message):
    __slots__ = ("timestamp_ns", "cpu_percent", "cpu_count", "memory_total_bytes", "memory_available_bytes", "disk_path", "disk_total_bytes", "disk_free_bytes", "load1", "load5", "load15", "uptime_seconds", "jobs")
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_PATH_FIELD_NUMBER: _ClassVar[int]
    DISK_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOAD1_FIELD_NUMBER: _ClassVar[int]
    LOAD5_FIELD_NUMBER: _ClassVar[int]
    LOAD15_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    timestamp_ns: int
    cpu_percent: float
    cpu_count: int
    memory_total_bytes: int
    memory_available_bytes: int
    disk_path: str
    disk_total_bytes: int
    disk_free_bytes: int
    load1: float
    load5: float
    load15: float
    uptime_seconds: float
    jobs: _containers.RepeatedCompositeFieldContainer[JobMetrics]
    def __init__(self, timestamp_ns: _Optional[int] = ..., cpu_percent: _Optional[float] = ..., cpu_count: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., memory_available_bytes: _Optional[int] = ..., disk_path: _Optional[str] = ..., disk_total_bytes: _Optional[int] = ..., disk_free_bytes: _Optional[int] = ..., load1: _Optional[float] = ..., load5: _Optional[float] = ..., load15: _Optional[float] = ..., uptime_seconds: _Optional[float] = ..., jobs: _Optional[_Iterable[_Union[JobMetrics, _Mapping]]] = ...) -> None: ...
