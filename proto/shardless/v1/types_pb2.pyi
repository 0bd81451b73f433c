from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ColumnType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLUMN_TYPE_UNSPECIFIED: _ClassVar[ColumnType]
    COLUMN_TYPE_BOOL: _ClassVar[ColumnType]
    COLUMN_TYPE_INT64: _ClassVar[ColumnType]
    COLUMN_TYPE_DOUBLE: _ClassVar[ColumnType]
    COLUMN_TYPE_STRING: _ClassVar[ColumnType]
    COLUMN_TYPE_BYTES: _ClassVar[ColumnType]
COLUMN_TYPE_UNSPECIFIED: ColumnType
COLUMN_TYPE_BOOL: ColumnType
COLUMN_TYPE_INT64: ColumnType
COLUMN_TYPE_DOUBLE: ColumnType
COLUMN_TYPE_STRING: ColumnType
COLUMN_TYPE_BYTES: ColumnType

class Value(_message.Message):
    __slots__ = ("bool_value", "int_value", "double_value", "string_value", "bytes_value")
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BYTES_VALUE_FIELD_NUMBER: _ClassVar[int]
    bool_value: bool
    int_value: int
    double_value: float
    string_value: str
    bytes_value: bytes
    def __init__(self, bool_value: _Optional[bool] = ..., int_value: _Optional[int] = ..., double_value: _Optional[float] = ..., string_value: _Optional[str] = ..., bytes_value: _Optional[bytes] = ...) -> None: ...

class Row(_message.Message):
    __slots__ = ("columns", "version")
    class ColumnsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    columns: _containers.MessageMap[str, Value]
    version: int
    def __init__(self, columns: _Optional[_Mapping[str, Value]] = ..., version: _Optional[int] = ...) -> None: ...

class PackedRows(_message.Message):
    __slots__ = ("columns", "rows")
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    columns: _containers.RepeatedScalarFieldContainer[str]
    rows: bytes
    def __init__(self, columns: _Optional[_Iterable[str]] = ..., rows: _Optional[bytes] = ...) -> None: ...

class Key(_message.Message):
    __slots__ = ("parts",)
    PARTS_FIELD_NUMBER: _ClassVar[int]
    parts: _containers.RepeatedCompositeFieldContainer[Value]
    def __init__(self, parts: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...) -> None: ...

class Column(_message.Message):
    __slots__ = ("name", "type", "not_null")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NOT_NULL_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: ColumnType
    not_null: bool
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[ColumnType, str]] = ..., not_null: _Optional[bool] = ...) -> None: ...

class TableSchema(_message.Message):
    __slots__ = ("name", "columns", "primary_key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    columns: _containers.RepeatedCompositeFieldContainer[Column]
    primary_key: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., columns: _Optional[_Iterable[_Union[Column, _Mapping]]] = ..., primary_key: _Optional[_Iterable[str]] = ...) -> None: ...

class Mutation(_message.Message):
    __slots__ = ("table", "kind", "row", "expected_version")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Mutation.Kind]
        INSERT: _ClassVar[Mutation.Kind]
        UPSERT: _ClassVar[Mutation.Kind]
        UPDATE: _ClassVar[Mutation.Kind]
        DELETE: _ClassVar[Mutation.Kind]
    KIND_UNSPECIFIED: Mutation.Kind
    INSERT: Mutation.Kind
    UPSERT: Mutation.Kind
    UPDATE: Mutation.Kind
    DELETE: Mutation.Kind
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    table: str
    kind: Mutation.Kind
    row: Row
    expected_version: int
    def __init__(self, table: _Optional[str] = ..., kind: _Optional[_Union[Mutation.Kind, str]] = ..., row: _Optional[_Union[Row, _Mapping]] = ..., expected_version: _Optional[int] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("table", "key", "exists", "version", "column_equals")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    COLUMN_EQUALS_FIELD_NUMBER: _ClassVar[int]
    table: str
    key: Key
    exists: bool
    version: int
    column_equals: ColumnValue
    def __init__(self, table: _Optional[str] = ..., key: _Optional[_Union[Key, _Mapping]] = ..., exists: _Optional[bool] = ..., version: _Optional[int] = ..., column_equals: _Optional[_Union[ColumnValue, _Mapping]] = ...) -> None: ...

class ColumnValue(_message.Message):
    __slots__ = ("column", "value")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    column: str
    value: Value
    def __init__(self, column: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("column", "op", "value")
    class Op(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OP_UNSPECIFIED: _ClassVar[Filter.Op]
        EQ: _ClassVar[Filter.Op]
        NE: _ClassVar[Filter.Op]
        LT: _ClassVar[Filter.Op]
        LE: _ClassVar[Filter.Op]
        GT: _ClassVar[Filter.Op]
        GE: _ClassVar[Filter.Op]
        IS_NULL: _ClassVar[Filter.Op]
        IS_NOT_NULL: _ClassVar[Filter.Op]
    OP_UNSPECIFIED: Filter.Op
    EQ: Filter.Op
    NE: Filter.Op
    LT: Filter.Op
    LE: Filter.Op
    GT: Filter.Op
    GE: Filter.Op
    IS_NULL: Filter.Op
    IS_NOT_NULL: Filter.Op
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    column: str
    op: Filter.Op
    value: Value
    def __init__(self, column: _Optional[str] = ..., op: _Optional[_Union[Filter.Op, str]] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...

class Bound(_message.Message):
    __slots__ = ("key", "exclusive")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXCLUSIVE_FIELD_NUMBER: _ClassVar[int]
    key: Key
    exclusive: bool
    def __init__(self, key: _Optional[_Union[Key, _Mapping]] = ..., exclusive: _Optional[bool] = ...) -> None: ...
