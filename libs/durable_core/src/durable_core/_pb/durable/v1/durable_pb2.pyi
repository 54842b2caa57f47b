from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_UNSPECIFIED: _ClassVar[Encoding]
    ENCODING_JSON: _ClassVar[Encoding]
    ENCODING_PROTOBUF: _ClassVar[Encoding]
    ENCODING_BYTES: _ClassVar[Encoding]

class CommandKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMMAND_KIND_UNSPECIFIED: _ClassVar[CommandKind]
    COMMAND_KIND_START: _ClassVar[CommandKind]
    COMMAND_KIND_WAKE: _ClassVar[CommandKind]

class EntryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTRY_KIND_UNSPECIFIED: _ClassVar[EntryKind]
    ENTRY_KIND_CLAIM: _ClassVar[EntryKind]
    ENTRY_KIND_CALL: _ClassVar[EntryKind]
    ENTRY_KIND_RUN: _ClassVar[EntryKind]
    ENTRY_KIND_COMPLETED: _ClassVar[EntryKind]
    ENTRY_KIND_FAILED: _ClassVar[EntryKind]
    ENTRY_KIND_SLEEP: _ClassVar[EntryKind]
    ENTRY_KIND_AWAKEABLE: _ClassVar[EntryKind]
    ENTRY_KIND_SIGNAL_WAIT: _ClassVar[EntryKind]
    ENTRY_KIND_STATE_SET: _ClassVar[EntryKind]
    ENTRY_KIND_STATE_CLEAR: _ClassVar[EntryKind]
    ENTRY_KIND_CHILD: _ClassVar[EntryKind]
    ENTRY_KIND_SEND: _ClassVar[EntryKind]
    ENTRY_KIND_SUSPENDED: _ClassVar[EntryKind]
    ENTRY_KIND_CANCELLED: _ClassVar[EntryKind]
    ENTRY_KIND_CANCEL_DELIVERED: _ClassVar[EntryKind]
    ENTRY_KIND_ATTEMPT_FAILED: _ClassVar[EntryKind]
    ENTRY_KIND_PATCH: _ClassVar[EntryKind]
    ENTRY_KIND_AWAKEABLE_RESULT: _ClassVar[EntryKind]
    ENTRY_KIND_SIGNAL: _ClassVar[EntryKind]
    ENTRY_KIND_CHILD_RESULT: _ClassVar[EntryKind]
    ENTRY_KIND_PAUSE_REQUEST: _ClassVar[EntryKind]
    ENTRY_KIND_RESUME_REQUEST: _ClassVar[EntryKind]
    ENTRY_KIND_CANCEL_REQUEST: _ClassVar[EntryKind]
    ENTRY_KIND_RETRY_REQUEST: _ClassVar[EntryKind]
    ENTRY_KIND_FORKED: _ClassVar[EntryKind]

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATUS_UNSPECIFIED: _ClassVar[Status]
    STATUS_PENDING: _ClassVar[Status]
    STATUS_RUNNING: _ClassVar[Status]
    STATUS_PAUSED: _ClassVar[Status]
    STATUS_COMPLETED: _ClassVar[Status]
    STATUS_FAILED: _ClassVar[Status]
    STATUS_CANCELLED: _ClassVar[Status]
    STATUS_SUSPENDED: _ClassVar[Status]
    STATUS_BLOCKED: _ClassVar[Status]
ENCODING_UNSPECIFIED: Encoding
ENCODING_JSON: Encoding
ENCODING_PROTOBUF: Encoding
ENCODING_BYTES: Encoding
COMMAND_KIND_UNSPECIFIED: CommandKind
COMMAND_KIND_START: CommandKind
COMMAND_KIND_WAKE: CommandKind
ENTRY_KIND_UNSPECIFIED: EntryKind
ENTRY_KIND_CLAIM: EntryKind
ENTRY_KIND_CALL: EntryKind
ENTRY_KIND_RUN: EntryKind
ENTRY_KIND_COMPLETED: EntryKind
ENTRY_KIND_FAILED: EntryKind
ENTRY_KIND_SLEEP: EntryKind
ENTRY_KIND_AWAKEABLE: EntryKind
ENTRY_KIND_SIGNAL_WAIT: EntryKind
ENTRY_KIND_STATE_SET: EntryKind
ENTRY_KIND_STATE_CLEAR: EntryKind
ENTRY_KIND_CHILD: EntryKind
ENTRY_KIND_SEND: EntryKind
ENTRY_KIND_SUSPENDED: EntryKind
ENTRY_KIND_CANCELLED: EntryKind
ENTRY_KIND_CANCEL_DELIVERED: EntryKind
ENTRY_KIND_ATTEMPT_FAILED: EntryKind
ENTRY_KIND_PATCH: EntryKind
ENTRY_KIND_AWAKEABLE_RESULT: EntryKind
ENTRY_KIND_SIGNAL: EntryKind
ENTRY_KIND_CHILD_RESULT: EntryKind
ENTRY_KIND_PAUSE_REQUEST: EntryKind
ENTRY_KIND_RESUME_REQUEST: EntryKind
ENTRY_KIND_CANCEL_REQUEST: EntryKind
ENTRY_KIND_RETRY_REQUEST: EntryKind
ENTRY_KIND_FORKED: EntryKind
STATUS_UNSPECIFIED: Status
STATUS_PENDING: Status
STATUS_RUNNING: Status
STATUS_PAUSED: Status
STATUS_COMPLETED: Status
STATUS_FAILED: Status
STATUS_CANCELLED: Status
STATUS_SUSPENDED: Status
STATUS_BLOCKED: Status

class Payload(_message.Message):
    __slots__ = ("encoding", "type_name", "data", "ref", "blob")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    TYPE_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    encoding: Encoding
    type_name: str
    data: bytes
    ref: PayloadRef
    blob: bool
    def __init__(self, encoding: _Optional[_Union[Encoding, str]] = ..., type_name: _Optional[str] = ..., data: _Optional[bytes] = ..., ref: _Optional[_Union[PayloadRef, _Mapping]] = ..., blob: _Optional[bool] = ...) -> None: ...

class PayloadRef(_message.Message):
    __slots__ = ("object", "size", "sha256")
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    object: str
    size: int
    sha256: bytes
    def __init__(self, object: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("invocation_id", "workflow", "args", "partition_key", "kind", "created_at_ms", "parent_id", "metadata", "min_journal_seq", "route", "supersedes", "notify", "state_at_start")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    PARTITION_KEY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    MIN_JOURNAL_SEQ_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDES_FIELD_NUMBER: _ClassVar[int]
    NOTIFY_FIELD_NUMBER: _ClassVar[int]
    STATE_AT_START_FIELD_NUMBER: _ClassVar[int]
    invocation_id: str
    workflow: str
    args: Payload
    partition_key: str
    kind: CommandKind
    created_at_ms: int
    parent_id: str
    metadata: _containers.ScalarMap[str, str]
    min_journal_seq: int
    route: str
    supersedes: int
    notify: str
    state_at_start: bool
    def __init__(self, invocation_id: _Optional[str] = ..., workflow: _Optional[str] = ..., args: _Optional[_Union[Payload, _Mapping]] = ..., partition_key: _Optional[str] = ..., kind: _Optional[_Union[CommandKind, str]] = ..., created_at_ms: _Optional[int] = ..., parent_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., min_journal_seq: _Optional[int] = ..., route: _Optional[str] = ..., supersedes: _Optional[int] = ..., notify: _Optional[str] = ..., state_at_start: _Optional[bool] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("type", "message", "code", "step")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    type: str
    message: str
    code: str
    step: int
    def __init__(self, type: _Optional[str] = ..., message: _Optional[str] = ..., code: _Optional[str] = ..., step: _Optional[int] = ...) -> None: ...

class JournalEntry(_message.Message):
    __slots__ = ("index", "kind", "step", "name", "input_hash", "output", "failure", "timestamp_ms", "writer", "attempts", "duration_us", "wake_at_ms", "detached", "command_seq", "plugin", "plugin_version", "code_fingerprint", "branch", "branch_step", "failed_steps", "failures_named")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_HASH_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    WRITER_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DURATION_US_FIELD_NUMBER: _ClassVar[int]
    WAKE_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DETACHED_FIELD_NUMBER: _ClassVar[int]
    COMMAND_SEQ_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    CODE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    BRANCH_STEP_FIELD_NUMBER: _ClassVar[int]
    FAILED_STEPS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_NAMED_FIELD_NUMBER: _ClassVar[int]
    index: int
    kind: EntryKind
    step: int
    name: str
    input_hash: bytes
    output: Payload
    failure: Failure
    timestamp_ms: int
    writer: str
    attempts: int
    duration_us: int
    wake_at_ms: int
    detached: bool
    command_seq: int
    plugin: str
    plugin_version: str
    code_fingerprint: str
    branch: str
    branch_step: int
    failed_steps: _containers.RepeatedScalarFieldContainer[int]
    failures_named: bool
    def __init__(self, index: _Optional[int] = ..., kind: _Optional[_Union[EntryKind, str]] = ..., step: _Optional[int] = ..., name: _Optional[str] = ..., input_hash: _Optional[bytes] = ..., output: _Optional[_Union[Payload, _Mapping]] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ..., timestamp_ms: _Optional[int] = ..., writer: _Optional[str] = ..., attempts: _Optional[int] = ..., duration_us: _Optional[int] = ..., wake_at_ms: _Optional[int] = ..., detached: _Optional[bool] = ..., command_seq: _Optional[int] = ..., plugin: _Optional[str] = ..., plugin_version: _Optional[str] = ..., code_fingerprint: _Optional[str] = ..., branch: _Optional[str] = ..., branch_step: _Optional[int] = ..., failed_steps: _Optional[_Iterable[int]] = ..., failures_named: _Optional[bool] = ...) -> None: ...

class ExecutionState(_message.Message):
    __slots__ = ("invocation_id", "workflow", "status", "args", "output", "failure", "partition_key", "created_at_ms", "updated_at_ms", "journal_length", "trace_id", "parent_id", "child_ids", "processor", "start_at_ms", "waiting_for", "parent_partition_key", "notify_parent", "parent_workflow", "forked_from", "deadline_ms", "rerun_of", "run_command_seq", "pinned_version", "blocked_reason", "notify", "fork_from_step", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    PARTITION_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHILD_IDS_FIELD_NUMBER: _ClassVar[int]
    PROCESSOR_FIELD_NUMBER: _ClassVar[int]
    START_AT_MS_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_FIELD_NUMBER: _ClassVar[int]
    PARENT_PARTITION_KEY_FIELD_NUMBER: _ClassVar[int]
    NOTIFY_PARENT_FIELD_NUMBER: _ClassVar[int]
    PARENT_WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    FORKED_FROM_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    RERUN_OF_FIELD_NUMBER: _ClassVar[int]
    RUN_COMMAND_SEQ_FIELD_NUMBER: _ClassVar[int]
    PINNED_VERSION_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_REASON_FIELD_NUMBER: _ClassVar[int]
    NOTIFY_FIELD_NUMBER: _ClassVar[int]
    FORK_FROM_STEP_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    invocation_id: str
    workflow: str
    status: Status
    args: Payload
    output: Payload
    failure: Failure
    partition_key: str
    created_at_ms: int
    updated_at_ms: int
    journal_length: int
    trace_id: str
    parent_id: str
    child_ids: _containers.RepeatedScalarFieldContainer[str]
    processor: str
    start_at_ms: int
    waiting_for: str
    parent_partition_key: str
    notify_parent: bool
    parent_workflow: str
    forked_from: str
    deadline_ms: int
    rerun_of: str
    run_command_seq: int
    pinned_version: str
    blocked_reason: str
    notify: str
    fork_from_step: int
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, invocation_id: _Optional[str] = ..., workflow: _Optional[str] = ..., status: _Optional[_Union[Status, str]] = ..., args: _Optional[_Union[Payload, _Mapping]] = ..., output: _Optional[_Union[Payload, _Mapping]] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ..., partition_key: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ..., journal_length: _Optional[int] = ..., trace_id: _Optional[str] = ..., parent_id: _Optional[str] = ..., child_ids: _Optional[_Iterable[str]] = ..., processor: _Optional[str] = ..., start_at_ms: _Optional[int] = ..., waiting_for: _Optional[str] = ..., parent_partition_key: _Optional[str] = ..., notify_parent: _Optional[bool] = ..., parent_workflow: _Optional[str] = ..., forked_from: _Optional[str] = ..., deadline_ms: _Optional[int] = ..., rerun_of: _Optional[str] = ..., run_command_seq: _Optional[int] = ..., pinned_version: _Optional[str] = ..., blocked_reason: _Optional[str] = ..., notify: _Optional[str] = ..., fork_from_step: _Optional[int] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ResultNotice(_message.Message):
    __slots__ = ("journal",)
    JOURNAL_FIELD_NUMBER: _ClassVar[int]
    journal: _containers.RepeatedCompositeFieldContainer[JournalEntry]
    def __init__(self, journal: _Optional[_Iterable[_Union[JournalEntry, _Mapping]]] = ...) -> None: ...
