from shardless.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateTableRequest(_message.Message):
    __slots__ = ("schema", "if_not_exists")
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    IF_NOT_EXISTS_FIELD_NUMBER: _ClassVar[int]
    schema: _types_pb2.TableSchema
    if_not_exists: bool
    def __init__(self, schema: _Optional[_Union[_types_pb2.TableSchema, _Mapping]] = ..., if_not_exists: _Optional[bool] = ...) -> None: ...

class CreateTableResponse(_message.Message):
    __slots__ = ("schema", "commit_position")
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    COMMIT_POSITION_FIELD_NUMBER: _ClassVar[int]
    schema: _types_pb2.TableSchema
    commit_position: int
    def __init__(self, schema: _Optional[_Union[_types_pb2.TableSchema, _Mapping]] = ..., commit_position: _Optional[int] = ...) -> None: ...

class DropTableRequest(_message.Message):
    __slots__ = ("name", "if_exists")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IF_EXISTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    if_exists: bool
    def __init__(self, name: _Optional[str] = ..., if_exists: _Optional[bool] = ...) -> None: ...

class DropTableResponse(_message.Message):
    __slots__ = ("dropped", "commit_position")
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    COMMIT_POSITION_FIELD_NUMBER: _ClassVar[int]
    dropped: bool
    commit_position: int
    def __init__(self, dropped: _Optional[bool] = ..., commit_position: _Optional[int] = ...) -> None: ...

class ListTablesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTablesResponse(_message.Message):
    __slots__ = ("tables",)
    TABLES_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedCompositeFieldContainer[_types_pb2.TableSchema]
    def __init__(self, tables: _Optional[_Iterable[_Union[_types_pb2.TableSchema, _Mapping]]] = ...) -> None: ...

class DescribeTableRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DescribeTableResponse(_message.Message):
    __slots__ = ("schema", "row_count")
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    schema: _types_pb2.TableSchema
    row_count: int
    def __init__(self, schema: _Optional[_Union[_types_pb2.TableSchema, _Mapping]] = ..., row_count: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("table", "key", "columns", "transaction_id", "for_update", "begin", "min_position")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    FOR_UPDATE_FIELD_NUMBER: _ClassVar[int]
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    MIN_POSITION_FIELD_NUMBER: _ClassVar[int]
    table: str
    key: _types_pb2.Key
    columns: _containers.RepeatedScalarFieldContainer[str]
    transaction_id: str
    for_update: bool
    begin: BeginRequest
    min_position: int
    def __init__(self, table: _Optional[str] = ..., key: _Optional[_Union[_types_pb2.Key, _Mapping]] = ..., columns: _Optional[_Iterable[str]] = ..., transaction_id: _Optional[str] = ..., for_update: _Optional[bool] = ..., begin: _Optional[_Union[BeginRequest, _Mapping]] = ..., min_position: _Optional[int] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("found", "row", "begun")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    BEGUN_FIELD_NUMBER: _ClassVar[int]
    found: bool
    row: _types_pb2.Row
    begun: BeginResponse
    def __init__(self, found: _Optional[bool] = ..., row: _Optional[_Union[_types_pb2.Row, _Mapping]] = ..., begun: _Optional[_Union[BeginResponse, _Mapping]] = ...) -> None: ...

class BatchGetRequest(_message.Message):
    __slots__ = ("table", "keys", "columns", "transaction_id", "for_update", "packed", "begin", "min_position")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    FOR_UPDATE_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    MIN_POSITION_FIELD_NUMBER: _ClassVar[int]
    table: str
    keys: _containers.RepeatedCompositeFieldContainer[_types_pb2.Key]
    columns: _containers.RepeatedScalarFieldContainer[str]
    transaction_id: str
    for_update: bool
    packed: bool
    begin: BeginRequest
    min_position: int
    def __init__(self, table: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[_types_pb2.Key, _Mapping]]] = ..., columns: _Optional[_Iterable[str]] = ..., transaction_id: _Optional[str] = ..., for_update: _Optional[bool] = ..., packed: _Optional[bool] = ..., begin: _Optional[_Union[BeginRequest, _Mapping]] = ..., min_position: _Optional[int] = ...) -> None: ...

class BatchGetResponse(_message.Message):
    __slots__ = ("results", "packed", "begun")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    BEGUN_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[GetResponse]
    packed: _types_pb2.PackedRows
    begun: BeginResponse
    def __init__(self, results: _Optional[_Iterable[_Union[GetResponse, _Mapping]]] = ..., packed: _Optional[_Union[_types_pb2.PackedRows, _Mapping]] = ..., begun: _Optional[_Union[BeginResponse, _Mapping]] = ...) -> None: ...

class WriteRowsRequest(_message.Message):
    __slots__ = ("table", "rows", "transaction_id", "idempotency_key", "packed")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    table: str
    rows: _containers.RepeatedCompositeFieldContainer[_types_pb2.Row]
    transaction_id: str
    idempotency_key: str
    packed: _types_pb2.PackedRows
    def __init__(self, table: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[_types_pb2.Row, _Mapping]]] = ..., transaction_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., packed: _Optional[_Union[_types_pb2.PackedRows, _Mapping]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("table", "keys", "transaction_id", "idempotency_key")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    table: str
    keys: _containers.RepeatedCompositeFieldContainer[_types_pb2.Key]
    transaction_id: str
    idempotency_key: str
    def __init__(self, table: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[_types_pb2.Key, _Mapping]]] = ..., transaction_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class WriteRequest(_message.Message):
    __slots__ = ("mutations", "transaction_id", "idempotency_key")
    MUTATIONS_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    mutations: _containers.RepeatedCompositeFieldContainer[_types_pb2.Mutation]
    transaction_id: str
    idempotency_key: str
    def __init__(self, mutations: _Optional[_Iterable[_Union[_types_pb2.Mutation, _Mapping]]] = ..., transaction_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("commit_position", "rows_affected", "replayed")
    COMMIT_POSITION_FIELD_NUMBER: _ClassVar[int]
    ROWS_AFFECTED_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    commit_position: int
    rows_affected: int
    replayed: bool
    def __init__(self, commit_position: _Optional[int] = ..., rows_affected: _Optional[int] = ..., replayed: _Optional[bool] = ...) -> None: ...

class ScanRequest(_message.Message):
    __slots__ = ("table", "start", "end", "limit", "reverse", "filters", "columns", "transaction_id", "for_update", "packed", "min_position")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REVERSE_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    FOR_UPDATE_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    MIN_POSITION_FIELD_NUMBER: _ClassVar[int]
    table: str
    start: _types_pb2.Bound
    end: _types_pb2.Bound
    limit: int
    reverse: bool
    filters: _containers.RepeatedCompositeFieldContainer[_types_pb2.Filter]
    columns: _containers.RepeatedScalarFieldContainer[str]
    transaction_id: str
    for_update: bool
    packed: bool
    min_position: int
    def __init__(self, table: _Optional[str] = ..., start: _Optional[_Union[_types_pb2.Bound, _Mapping]] = ..., end: _Optional[_Union[_types_pb2.Bound, _Mapping]] = ..., limit: _Optional[int] = ..., reverse: _Optional[bool] = ..., filters: _Optional[_Iterable[_Union[_types_pb2.Filter, _Mapping]]] = ..., columns: _Optional[_Iterable[str]] = ..., transaction_id: _Optional[str] = ..., for_update: _Optional[bool] = ..., packed: _Optional[bool] = ..., min_position: _Optional[int] = ...) -> None: ...

class ScanResponse(_message.Message):
    __slots__ = ("rows", "packed")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[_types_pb2.Row]
    packed: _types_pb2.PackedRows
    def __init__(self, rows: _Optional[_Iterable[_Union[_types_pb2.Row, _Mapping]]] = ..., packed: _Optional[_Union[_types_pb2.PackedRows, _Mapping]] = ...) -> None: ...

class GetOutcomeRequest(_message.Message):
    __slots__ = ("idempotency_key", "settle")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    SETTLE_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    settle: bool
    def __init__(self, idempotency_key: _Optional[str] = ..., settle: _Optional[bool] = ...) -> None: ...

class GetOutcomeResponse(_message.Message):
    __slots__ = ("state", "commit_position", "rows_affected", "failure_code", "failure_message")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[GetOutcomeResponse.State]
        UNKNOWN: _ClassVar[GetOutcomeResponse.State]
        APPLIED: _ClassVar[GetOutcomeResponse.State]
        FAILED: _ClassVar[GetOutcomeResponse.State]
        ABANDONED: _ClassVar[GetOutcomeResponse.State]
    STATE_UNSPECIFIED: GetOutcomeResponse.State
    UNKNOWN: GetOutcomeResponse.State
    APPLIED: GetOutcomeResponse.State
    FAILED: GetOutcomeResponse.State
    ABANDONED: GetOutcomeResponse.State
    STATE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_POSITION_FIELD_NUMBER: _ClassVar[int]
    ROWS_AFFECTED_FIELD_NUMBER: _ClassVar[int]
    FAILURE_CODE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    state: GetOutcomeResponse.State
    commit_position: int
    rows_affected: int
    failure_code: str
    failure_message: str
    def __init__(self, state: _Optional[_Union[GetOutcomeResponse.State, str]] = ..., commit_position: _Optional[int] = ..., rows_affected: _Optional[int] = ..., failure_code: _Optional[str] = ..., failure_message: _Optional[str] = ...) -> None: ...

class BeginRequest(_message.Message):
    __slots__ = ("read_only", "min_position", "lifetime_ms")
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    MIN_POSITION_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_MS_FIELD_NUMBER: _ClassVar[int]
    read_only: bool
    min_position: int
    lifetime_ms: int
    def __init__(self, read_only: _Optional[bool] = ..., min_position: _Optional[int] = ..., lifetime_ms: _Optional[int] = ...) -> None: ...

class BeginResponse(_message.Message):
    __slots__ = ("transaction_id", "node_id", "address")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    node_id: str
    address: str
    def __init__(self, transaction_id: _Optional[str] = ..., node_id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("transaction_id", "idempotency_key", "mutations")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    MUTATIONS_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    idempotency_key: str
    mutations: _containers.RepeatedCompositeFieldContainer[_types_pb2.Mutation]
    def __init__(self, transaction_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., mutations: _Optional[_Iterable[_Union[_types_pb2.Mutation, _Mapping]]] = ...) -> None: ...

class CommitResponse(_message.Message):
    __slots__ = ("commit_position", "rows_affected", "replayed", "committed_transaction_id")
    COMMIT_POSITION_FIELD_NUMBER: _ClassVar[int]
    ROWS_AFFECTED_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    commit_position: int
    rows_affected: int
    replayed: bool
    committed_transaction_id: str
    def __init__(self, commit_position: _Optional[int] = ..., rows_affected: _Optional[int] = ..., replayed: _Optional[bool] = ..., committed_transaction_id: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("transaction_id",)
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    def __init__(self, transaction_id: _Optional[str] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReadOp(_message.Message):
    __slots__ = ("table", "key", "columns")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    table: str
    key: _types_pb2.Key
    columns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, table: _Optional[str] = ..., key: _Optional[_Union[_types_pb2.Key, _Mapping]] = ..., columns: _Optional[_Iterable[str]] = ...) -> None: ...

class ExecuteRequest(_message.Message):
    __slots__ = ("conditions", "reads", "writes", "idempotency_key", "min_position")
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    READS_FIELD_NUMBER: _ClassVar[int]
    WRITES_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    MIN_POSITION_FIELD_NUMBER: _ClassVar[int]
    conditions: _containers.RepeatedCompositeFieldContainer[_types_pb2.Condition]
    reads: _containers.RepeatedCompositeFieldContainer[ReadOp]
    writes: _containers.RepeatedCompositeFieldContainer[_types_pb2.Mutation]
    idempotency_key: str
    min_position: int
    def __init__(self, conditions: _Optional[_Iterable[_Union[_types_pb2.Condition, _Mapping]]] = ..., reads: _Optional[_Iterable[_Union[ReadOp, _Mapping]]] = ..., writes: _Optional[_Iterable[_Union[_types_pb2.Mutation, _Mapping]]] = ..., idempotency_key: _Optional[str] = ..., min_position: _Optional[int] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("reads", "commit_position", "rows_affected", "replayed")
    READS_FIELD_NUMBER: _ClassVar[int]
    COMMIT_POSITION_FIELD_NUMBER: _ClassVar[int]
    ROWS_AFFECTED_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    reads: _containers.RepeatedCompositeFieldContainer[GetResponse]
    commit_position: int
    rows_affected: int
    replayed: bool
    def __init__(self, reads: _Optional[_Iterable[_Union[GetResponse, _Mapping]]] = ..., commit_position: _Optional[int] = ..., rows_affected: _Optional[int] = ..., replayed: _Optional[bool] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class DrainResponse(_message.Message):
    __slots__ = ("node_id", "open_transactions", "grace_seconds")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    OPEN_TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    open_transactions: int
    grace_seconds: float
    def __init__(self, node_id: _Optional[str] = ..., open_transactions: _Optional[int] = ..., grace_seconds: _Optional[float] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("local_only",)
    LOCAL_ONLY_FIELD_NUMBER: _ClassVar[int]
    local_only: bool
    def __init__(self, local_only: _Optional[bool] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("node_id", "address", "session", "pid", "started_at", "session_ttl_remaining", "group", "public_address", "volume_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    SESSION_TTL_REMAINING_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    session: str
    pid: int
    started_at: float
    session_ttl_remaining: int
    group: str
    public_address: str
    volume_id: str
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., session: _Optional[str] = ..., pid: _Optional[int] = ..., started_at: _Optional[float] = ..., session_ttl_remaining: _Optional[int] = ..., group: _Optional[str] = ..., public_address: _Optional[str] = ..., volume_id: _Optional[str] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("node_id", "members", "leader", "volume", "commit_position", "cluster", "version", "locks", "waits", "transactions", "leader_activity", "counters", "log_oldest_position", "log_bytes", "replicas", "epoch", "primary_volume_id", "volume_id", "readers")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    COMMIT_POSITION_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LOCKS_FIELD_NUMBER: _ClassVar[int]
    WAITS_FIELD_NUMBER: _ClassVar[int]
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    LEADER_ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    LOG_OLDEST_POSITION_FIELD_NUMBER: _ClassVar[int]
    LOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    READERS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    members: _containers.RepeatedCompositeFieldContainer[Member]
    leader: str
    volume: str
    commit_position: int
    cluster: str
    version: str
    locks: _containers.RepeatedCompositeFieldContainer[LockInfo]
    waits: _containers.RepeatedCompositeFieldContainer[WaitInfo]
    transactions: _containers.RepeatedCompositeFieldContainer[TransactionInfo]
    leader_activity: str
    counters: _containers.ScalarMap[str, int]
    log_oldest_position: int
    log_bytes: int
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaInfo]
    epoch: int
    primary_volume_id: str
    volume_id: str
    readers: _containers.RepeatedCompositeFieldContainer[ReaderInfo]
    def __init__(self, node_id: _Optional[str] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., leader: _Optional[str] = ..., volume: _Optional[str] = ..., commit_position: _Optional[int] = ..., cluster: _Optional[str] = ..., version: _Optional[str] = ..., locks: _Optional[_Iterable[_Union[LockInfo, _Mapping]]] = ..., waits: _Optional[_Iterable[_Union[WaitInfo, _Mapping]]] = ..., transactions: _Optional[_Iterable[_Union[TransactionInfo, _Mapping]]] = ..., leader_activity: _Optional[str] = ..., counters: _Optional[_Mapping[str, int]] = ..., log_oldest_position: _Optional[int] = ..., log_bytes: _Optional[int] = ..., replicas: _Optional[_Iterable[_Union[ReplicaInfo, _Mapping]]] = ..., epoch: _Optional[int] = ..., primary_volume_id: _Optional[str] = ..., volume_id: _Optional[str] = ..., readers: _Optional[_Iterable[_Union[ReaderInfo, _Mapping]]] = ...) -> None: ...

class ReaderInfo(_message.Message):
    __slots__ = ("node_id", "address", "volume_id", "position", "lag_positions", "updated_at")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    LAG_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    volume_id: str
    position: int
    lag_positions: int
    updated_at: float
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., volume_id: _Optional[str] = ..., position: _Optional[int] = ..., lag_positions: _Optional[int] = ..., updated_at: _Optional[float] = ...) -> None: ...

class ReplicaInfo(_message.Message):
    __slots__ = ("replica_id", "address", "mode", "position", "caught_up", "lag_positions", "lag_seconds", "updated_at", "sync_state", "registered", "volume_id", "primary_last")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    CAUGHT_UP_FIELD_NUMBER: _ClassVar[int]
    LAG_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    SYNC_STATE_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_LAST_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    address: str
    mode: str
    position: int
    caught_up: bool
    lag_positions: int
    lag_seconds: float
    updated_at: float
    sync_state: str
    registered: bool
    volume_id: str
    primary_last: int
    def __init__(self, replica_id: _Optional[str] = ..., address: _Optional[str] = ..., mode: _Optional[str] = ..., position: _Optional[int] = ..., caught_up: _Optional[bool] = ..., lag_positions: _Optional[int] = ..., lag_seconds: _Optional[float] = ..., updated_at: _Optional[float] = ..., sync_state: _Optional[str] = ..., registered: _Optional[bool] = ..., volume_id: _Optional[str] = ..., primary_last: _Optional[int] = ...) -> None: ...

class LockInfo(_message.Message):
    __slots__ = ("resource", "mode", "transaction_id", "node_id", "granted")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    resource: str
    mode: str
    transaction_id: str
    node_id: str
    granted: bool
    def __init__(self, resource: _Optional[str] = ..., mode: _Optional[str] = ..., transaction_id: _Optional[str] = ..., node_id: _Optional[str] = ..., granted: _Optional[bool] = ...) -> None: ...

class WaitInfo(_message.Message):
    __slots__ = ("transaction_id", "node_id", "resource", "mode", "waits_for")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    WAITS_FOR_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    node_id: str
    resource: str
    mode: str
    waits_for: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, transaction_id: _Optional[str] = ..., node_id: _Optional[str] = ..., resource: _Optional[str] = ..., mode: _Optional[str] = ..., waits_for: _Optional[_Iterable[str]] = ...) -> None: ...

class TransactionInfo(_message.Message):
    __slots__ = ("transaction_id", "node_id", "read_only", "started_at", "idle_s", "locks_held")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    IDLE_S_FIELD_NUMBER: _ClassVar[int]
    LOCKS_HELD_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    node_id: str
    read_only: bool
    started_at: float
    idle_s: float
    locks_held: int
    def __init__(self, transaction_id: _Optional[str] = ..., node_id: _Optional[str] = ..., read_only: _Optional[bool] = ..., started_at: _Optional[float] = ..., idle_s: _Optional[float] = ..., locks_held: _Optional[int] = ...) -> None: ...

class ReadLogRequest(_message.Message):
    __slots__ = ("start_position", "max_records", "batch_records", "follow")
    START_POSITION_FIELD_NUMBER: _ClassVar[int]
    MAX_RECORDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_RECORDS_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    start_position: int
    max_records: int
    batch_records: int
    follow: bool
    def __init__(self, start_position: _Optional[int] = ..., max_records: _Optional[int] = ..., batch_records: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class LogRecord(_message.Message):
    __slots__ = ("position", "ts", "node_id", "data")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    position: int
    ts: float
    node_id: str
    data: bytes
    def __init__(self, position: _Optional[int] = ..., ts: _Optional[float] = ..., node_id: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class ReadLogResponse(_message.Message):
    __slots__ = ("records", "oldest_position", "last_position")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    OLDEST_POSITION_FIELD_NUMBER: _ClassVar[int]
    LAST_POSITION_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[LogRecord]
    oldest_position: int
    last_position: int
    def __init__(self, records: _Optional[_Iterable[_Union[LogRecord, _Mapping]]] = ..., oldest_position: _Optional[int] = ..., last_position: _Optional[int] = ...) -> None: ...

class CopyVolumeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CopyVolumeResponse(_message.Message):
    __slots__ = ("position", "items", "done")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    position: int
    items: bytes
    done: bool
    def __init__(self, position: _Optional[int] = ..., items: _Optional[bytes] = ..., done: _Optional[bool] = ...) -> None: ...

class ReportPositionRequest(_message.Message):
    __slots__ = ("replica_id", "position")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    position: int
    def __init__(self, replica_id: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class ReportPositionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("table", "start", "end", "start_position", "start_index", "from_now", "max_changes")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    START_POSITION_FIELD_NUMBER: _ClassVar[int]
    START_INDEX_FIELD_NUMBER: _ClassVar[int]
    FROM_NOW_FIELD_NUMBER: _ClassVar[int]
    MAX_CHANGES_FIELD_NUMBER: _ClassVar[int]
    table: str
    start: _types_pb2.Bound
    end: _types_pb2.Bound
    start_position: int
    start_index: int
    from_now: bool
    max_changes: int
    def __init__(self, table: _Optional[str] = ..., start: _Optional[_Union[_types_pb2.Bound, _Mapping]] = ..., end: _Optional[_Union[_types_pb2.Bound, _Mapping]] = ..., start_position: _Optional[int] = ..., start_index: _Optional[int] = ..., from_now: _Optional[bool] = ..., max_changes: _Optional[int] = ...) -> None: ...

class Change(_message.Message):
    __slots__ = ("position", "index", "kind", "ts", "key", "row", "schema", "table")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Change.Kind]
        PUT: _ClassVar[Change.Kind]
        DELETE: _ClassVar[Change.Kind]
        CREATE_TABLE: _ClassVar[Change.Kind]
        DROP_TABLE: _ClassVar[Change.Kind]
    KIND_UNSPECIFIED: Change.Kind
    PUT: Change.Kind
    DELETE: Change.Kind
    CREATE_TABLE: Change.Kind
    DROP_TABLE: Change.Kind
    POSITION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    position: int
    index: int
    kind: Change.Kind
    ts: float
    key: _types_pb2.Key
    row: _types_pb2.Row
    schema: _types_pb2.TableSchema
    table: str
    def __init__(self, position: _Optional[int] = ..., index: _Optional[int] = ..., kind: _Optional[_Union[Change.Kind, str]] = ..., ts: _Optional[float] = ..., key: _Optional[_Union[_types_pb2.Key, _Mapping]] = ..., row: _Optional[_Union[_types_pb2.Row, _Mapping]] = ..., schema: _Optional[_Union[_types_pb2.TableSchema, _Mapping]] = ..., table: _Optional[str] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("changes", "position", "oldest_position", "last_position")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    OLDEST_POSITION_FIELD_NUMBER: _ClassVar[int]
    LAST_POSITION_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[Change]
    position: int
    oldest_position: int
    last_position: int
    def __init__(self, changes: _Optional[_Iterable[_Union[Change, _Mapping]]] = ..., position: _Optional[int] = ..., oldest_position: _Optional[int] = ..., last_position: _Optional[int] = ...) -> None: ...

class HoldRequest(_message.Message):
    __slots__ = ("name", "position", "ttl_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    position: int
    ttl_seconds: float
    def __init__(self, name: _Optional[str] = ..., position: _Optional[int] = ..., ttl_seconds: _Optional[float] = ...) -> None: ...

class HoldResponse(_message.Message):
    __slots__ = ("oldest_position",)
    OLDEST_POSITION_FIELD_NUMBER: _ClassVar[int]
    oldest_position: int
    def __init__(self, oldest_position: _Optional[int] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...
