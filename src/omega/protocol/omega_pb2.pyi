from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_TYPE_UNSPECIFIED: _ClassVar[TaskType]
    TASK_TYPE_CONTENT_MATCH: _ClassVar[TaskType]
    TASK_TYPE_CONTEXT_MATCH: _ClassVar[TaskType]
    TASK_TYPE_GENRE_AFFINITY: _ClassVar[TaskType]
    TASK_TYPE_TIME_OF_DAY: _ClassVar[TaskType]
    TASK_TYPE_CONTINUATION: _ClassVar[TaskType]

class Tier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_UNSPECIFIED: _ClassVar[Tier]
    TIER_PREMIUM: _ClassVar[Tier]
    TIER_ACTIVE: _ClassVar[Tier]
    TIER_CASUAL: _ClassVar[Tier]

class Keyspace(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEYSPACE_UNSPECIFIED: _ClassVar[Keyspace]
    KEYSPACE_ITEM: _ClassVar[Keyspace]
    KEYSPACE_CELL: _ClassVar[Keyspace]
    KEYSPACE_PAIR: _ClassVar[Keyspace]
    KEYSPACE_REFINED: _ClassVar[Keyspace]
    KEYSPACE_COWATCH: _ClassVar[Keyspace]
TASK_TYPE_UNSPECIFIED: TaskType
TASK_TYPE_CONTENT_MATCH: TaskType
TASK_TYPE_CONTEXT_MATCH: TaskType
TASK_TYPE_GENRE_AFFINITY: TaskType
TASK_TYPE_TIME_OF_DAY: TaskType
TASK_TYPE_CONTINUATION: TaskType
TIER_UNSPECIFIED: Tier
TIER_PREMIUM: Tier
TIER_ACTIVE: Tier
TIER_CASUAL: Tier
KEYSPACE_UNSPECIFIED: Keyspace
KEYSPACE_ITEM: Keyspace
KEYSPACE_CELL: Keyspace
KEYSPACE_PAIR: Keyspace
KEYSPACE_REFINED: Keyspace
KEYSPACE_COWATCH: Keyspace

class EmbeddingPattern(_message.Message):
    __slots__ = ("id", "version", "q", "bits", "scale", "offset", "success_rate", "uses", "successes", "task_type", "cell_plus_one", "codebook_version")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    Q_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    CELL_PLUS_ONE_FIELD_NUMBER: _ClassVar[int]
    CODEBOOK_VERSION_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    version: int
    q: bytes
    bits: int
    scale: float
    offset: float
    success_rate: float
    uses: int
    successes: int
    task_type: TaskType
    cell_plus_one: int
    codebook_version: int
    def __init__(self, id: _Optional[bytes] = ..., version: _Optional[int] = ..., q: _Optional[bytes] = ..., bits: _Optional[int] = ..., scale: _Optional[float] = ..., offset: _Optional[float] = ..., success_rate: _Optional[float] = ..., uses: _Optional[int] = ..., successes: _Optional[int] = ..., task_type: _Optional[_Union[TaskType, str]] = ..., cell_plus_one: _Optional[int] = ..., codebook_version: _Optional[int] = ...) -> None: ...

class TransitionBatch(_message.Message):
    __slots__ = ("keyspace", "codebook_version", "src_delta", "dst", "weight", "support")
    KEYSPACE_FIELD_NUMBER: _ClassVar[int]
    CODEBOOK_VERSION_FIELD_NUMBER: _ClassVar[int]
    SRC_DELTA_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    keyspace: Keyspace
    codebook_version: int
    src_delta: _containers.RepeatedScalarFieldContainer[int]
    dst: _containers.RepeatedScalarFieldContainer[int]
    weight: _containers.RepeatedScalarFieldContainer[int]
    support: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, keyspace: _Optional[_Union[Keyspace, str]] = ..., codebook_version: _Optional[int] = ..., src_delta: _Optional[_Iterable[int]] = ..., dst: _Optional[_Iterable[int]] = ..., weight: _Optional[_Iterable[int]] = ..., support: _Optional[_Iterable[int]] = ...) -> None: ...

class Push(_message.Message):
    __slots__ = ("batch_id", "patterns", "transitions", "cowatch")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    COWATCH_FIELD_NUMBER: _ClassVar[int]
    batch_id: bytes
    patterns: _containers.RepeatedCompositeFieldContainer[EmbeddingPattern]
    transitions: TransitionBatch
    cowatch: TransitionBatch
    def __init__(self, batch_id: _Optional[bytes] = ..., patterns: _Optional[_Iterable[_Union[EmbeddingPattern, _Mapping]]] = ..., transitions: _Optional[_Union[TransitionBatch, _Mapping]] = ..., cowatch: _Optional[_Union[TransitionBatch, _Mapping]] = ...) -> None: ...

class Pull(_message.Message):
    __slots__ = ("since", "max_bytes", "codebook_version", "refined_since")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    CODEBOOK_VERSION_FIELD_NUMBER: _ClassVar[int]
    REFINED_SINCE_FIELD_NUMBER: _ClassVar[int]
    since: int
    max_bytes: int
    codebook_version: int
    refined_since: int
    def __init__(self, since: _Optional[int] = ..., max_bytes: _Optional[int] = ..., codebook_version: _Optional[int] = ..., refined_since: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("tier", "outbox", "patterns")
    TIER_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_FIELD_NUMBER: _ClassVar[int]
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    tier: Tier
    outbox: int
    patterns: int
    def __init__(self, tier: _Optional[_Union[Tier, str]] = ..., outbox: _Optional[int] = ..., patterns: _Optional[int] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("index", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    reason: str
    def __init__(self, index: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class PushAck(_message.Message):
    __slots__ = ("batch_id", "accepted", "rejected", "duplicate")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    batch_id: bytes
    accepted: int
    rejected: _containers.RepeatedCompositeFieldContainer[Rejection]
    duplicate: bool
    def __init__(self, batch_id: _Optional[bytes] = ..., accepted: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class ConsolidatedPattern(_message.Message):
    __slots__ = ("cluster_id", "version", "q", "bits", "scale", "offset", "task_type", "success_rate", "support", "trend_score")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    Q_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    TREND_SCORE_FIELD_NUMBER: _ClassVar[int]
    cluster_id: int
    version: int
    q: bytes
    bits: int
    scale: float
    offset: float
    task_type: TaskType
    success_rate: float
    support: int
    trend_score: float
    def __init__(self, cluster_id: _Optional[int] = ..., version: _Optional[int] = ..., q: _Optional[bytes] = ..., bits: _Optional[int] = ..., scale: _Optional[float] = ..., offset: _Optional[float] = ..., task_type: _Optional[_Union[TaskType, str]] = ..., success_rate: _Optional[float] = ..., support: _Optional[int] = ..., trend_score: _Optional[float] = ...) -> None: ...

class PullReply(_message.Message):
    __slots__ = ("cursor", "more", "patterns", "transitions", "pairs", "refined", "refined_cursor", "reset")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    REFINED_FIELD_NUMBER: _ClassVar[int]
    REFINED_CURSOR_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    cursor: int
    more: bool
    patterns: _containers.RepeatedCompositeFieldContainer[ConsolidatedPattern]
    transitions: TransitionBatch
    pairs: TransitionBatch
    refined: TransitionBatch
    refined_cursor: int
    reset: bool
    def __init__(self, cursor: _Optional[int] = ..., more: _Optional[bool] = ..., patterns: _Optional[_Iterable[_Union[ConsolidatedPattern, _Mapping]]] = ..., transitions: _Optional[_Union[TransitionBatch, _Mapping]] = ..., pairs: _Optional[_Union[TransitionBatch, _Mapping]] = ..., refined: _Optional[_Union[TransitionBatch, _Mapping]] = ..., refined_cursor: _Optional[int] = ..., reset: _Optional[bool] = ...) -> None: ...

class HeartbeatAck(_message.Message):
    __slots__ = ("server_time_ms", "next_sync_s", "retry_after_s")
    SERVER_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    NEXT_SYNC_S_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    server_time_ms: int
    next_sync_s: int
    retry_after_s: int
    def __init__(self, server_time_ms: _Optional[int] = ..., next_sync_s: _Optional[int] = ..., retry_after_s: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "retry_after_s")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    retry_after_s: int
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., retry_after_s: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("device_id", "timestamp_ms", "seq", "key_id", "push", "pull", "heartbeat", "push_ack", "pull_reply", "heartbeat_ack", "error")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUSH_FIELD_NUMBER: _ClassVar[int]
    PULL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    PUSH_ACK_FIELD_NUMBER: _ClassVar[int]
    PULL_REPLY_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_ACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    device_id: bytes
    timestamp_ms: int
    seq: int
    key_id: int
    push: Push
    pull: Pull
    heartbeat: Heartbeat
    push_ack: PushAck
    pull_reply: PullReply
    heartbeat_ack: HeartbeatAck
    error: Error
    def __init__(self, device_id: _Optional[bytes] = ..., timestamp_ms: _Optional[int] = ..., seq: _Optional[int] = ..., key_id: _Optional[int] = ..., push: _Optional[_Union[Push, _Mapping]] = ..., pull: _Optional[_Union[Pull, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., push_ack: _Optional[_Union[PushAck, _Mapping]] = ..., pull_reply: _Optional[_Union[PullReply, _Mapping]] = ..., heartbeat_ack: _Optional[_Union[HeartbeatAck, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...
