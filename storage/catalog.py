"""Table schemas: their validation, their stored form, and the checks of rows against them.

Owns: what a valid table name, column and primary key are; the column types; the limits on names
and rows; turning a schema into bytes and back. Does not own: where schemas are stored (the
``Store`` in ``store.py`` puts them under ``keys.catalog``) or anything about the API.

Limits (documented in docs/limits.md): names are 1..128 printable characters (and at most 510 bytes
of UTF-8); at most 256 columns; at most 16 primary-key columns; an encoded primary key of
at most ``keys.MAX_ENCODED_PK`` bytes; an encoded row of at most ``MAX_ROW_BYTES``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from storage import keycode
from storage.errors import Corrupt, InvalidInput
from storage.keys import MAX_ENCODED_PK

BOOL, INT64, DOUBLE, STRING, BYTES = "bool", "int64", "double", "string", "bytes"
COLUMN_TYPES = (BOOL, INT64, DOUBLE, STRING, BYTES)

MAX_NAME_CHARS = 128
MAX_NAME_BYTES = 510  # a table name is part of its catalog key; LMDB keys are <= 511 bytes
MAX_COLUMNS = 256
MAX_PK_COLUMNS = 16
MAX_ROW_BYTES = 1 << 20  # 1 MiB per encoded row

Value = None | bool | int | float | str | bytes
_PY_TYPE = {BOOL: bool, INT64: int, DOUBLE: float, STRING: str, BYTES: bytes}


def check_name(kind: str, name: str) -> None:
    """Refuse an empty, over-long or unprintable table or column name.

    Raises:
        InvalidInput: naming ``kind`` ("table" or "column") and the rule broken.
    """
    if not name:
        raise InvalidInput(f"{kind} name is empty")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidInput(f"{kind} name is {len(name)} characters long; the limit is "
                           f"{MAX_NAME_CHARS}")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidInput(f"{kind} name is longer than {MAX_NAME_BYTES} bytes in UTF-8")
    if not name.isprintable():
        raise InvalidInput(f"{kind} name {name!r} contains control or unprintable characters")


def check_value(column: Column, value: Any) -> None:
    """Refuse a value that the column's type or nullability does not admit.

    Raises:
        InvalidInput: naming the column, its type and what was given.
    """
    if value is None:
        if column.not_null:
            raise InvalidInput(f"column {column.name!r} is NOT NULL")
        return
    t = column.type
    ok = (
        (t == BOOL and isinstance(value, bool))
        or (t == INT64 and isinstance(value, int) and not isinstance(value, bool)
            and keycode.INT64_MIN <= value <= keycode.INT64_MAX)
        or (t == DOUBLE and isinstance(value, float))
        or (t == STRING and isinstance(value, str))
        or (t == BYTES and isinstance(value, bytes))
    )
    if not ok:
        raise InvalidInput(f"column {column.name!r} is {t}; got {type_name(value)}")


def type_name(value: Any) -> str:
    """Name of a value's type in the API's words."""
    if value is None:
        return "null"
    return {bool: BOOL, int: INT64, float: DOUBLE, str: STRING, bytes: BYTES}.get(
        type(value), type(value).__name__)


@dataclass(frozen=True)
class Column:
    """One typed column. Primary-key columns are always NOT NULL."""

    name: str
    type: str
    not_null: bool = False


@dataclass(frozen=True)
class Schema:
    """A table: its id (never reused), columns in order, and primary-key column names."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    table_id: int = 0
    by_name: Mapping[str, Column] = field(init=False, repr=False, compare=False)
    pk_columns: tuple[Column, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {c.name: c for c in self.columns})
        object.__setattr__(self, "pk_columns",
                           tuple(self.by_name[n] for n in self.primary_key if n in self.by_name))
        object.__setattr__(self, "_pk_types",
                           tuple(_PY_TYPE.get(c.type) for c in self.pk_columns))
        object.__setattr__(self, "_index", {c.name: i for i, c in enumerate(self.columns)})
        object.__setattr__(self, "_pk_index", tuple(self._index[c.name]  # type: ignore[attr-defined]
                                                     for c in self.pk_columns))
        object.__setattr__(self, "_not_null", tuple(i for i, c in enumerate(self.columns)
                                                    if c.not_null))

    @staticmethod
    def build(name: str, columns: list[Column], primary_key: list[str]) -> Schema:
        """Validate a new table's definition and return its schema (table id not yet assigned).

        Raises:
            InvalidInput: for a bad name, an unknown type, duplicate columns, or a bad key.
        """
        check_name("table", name)
        if not columns:
            raise InvalidInput(f"table {name!r} has no columns")
        if len(columns) > MAX_COLUMNS:
            raise InvalidInput(f"table {name!r} has {len(columns)} columns; the limit is "
                               f"{MAX_COLUMNS}")
        seen: set[str] = set()
        for c in columns:
            check_name("column", c.name)
            if c.type not in COLUMN_TYPES:
                raise InvalidInput(f"column {c.name!r} has no valid type (one of "
                                   f"{', '.join(COLUMN_TYPES)})")
            if c.name in seen:
                raise InvalidInput(f"column {c.name!r} is defined twice")
            seen.add(c.name)
        if not primary_key:
            raise InvalidInput(f"table {name!r} has no primary key")
        if len(primary_key) > MAX_PK_COLUMNS:
            raise InvalidInput(f"primary key has {len(primary_key)} columns; the limit is "
                               f"{MAX_PK_COLUMNS}")
        if len(set(primary_key)) != len(primary_key):
            raise InvalidInput("primary key names a column twice")
        for k in primary_key:
            if k not in seen:
                raise InvalidInput(f"primary-key column {k!r} is not a column of the table")
        pk = set(primary_key)
        cols = tuple(Column(c.name, c.type, c.not_null or c.name in pk) for c in columns)
        return Schema(name, cols, tuple(primary_key))

    def with_id(self, table_id: int) -> Schema:
        """Return this schema with its table id assigned."""
        return Schema(self.name, self.columns, self.primary_key, table_id)

    # -- keys -------------------------------------------------------------------------------

    def check_key(self, key: tuple[Any, ...], *, prefix: bool = False) -> bytes:
        """Validate a primary key (or, with ``prefix``, a leading part of one) and encode it.

        Raises:
            InvalidInput: wrong arity, a wrong type, NULL, NaN, or an over-long key.
        """
        n = len(self.primary_key)
        if not prefix and len(key) == n and all(  # the common case, checked cheaply
                type(v) is t for v, t in zip(key, self._pk_types, strict=True)):  # type: ignore[attr-defined]
            encoded = keycode.encode(key)
            if len(encoded) <= MAX_ENCODED_PK:
                return encoded
        if (prefix and len(key) > n) or (not prefix and len(key) != n):
            want = f"at most {n}" if prefix else f"{n}"
            raise InvalidInput(f"table {self.name!r} has a primary key of {n} column(s) "
                               f"({', '.join(self.primary_key)}); got {len(key)} value(s), "
                               f"expected {want}")
        for col, v in zip(self.pk_columns, key, strict=False):
            if v is None:
                raise InvalidInput(f"primary-key column {col.name!r} cannot be NULL")
            check_value(col, v)
            if isinstance(v, float) and math.isnan(v):
                raise InvalidInput(f"primary-key column {col.name!r} cannot be NaN")
        encoded = keycode.encode(key)
        if len(encoded) > MAX_ENCODED_PK:
            raise InvalidInput(f"primary key is {len(encoded)} bytes encoded; the limit is "
                               f"{MAX_ENCODED_PK}")
        return encoded

    def key_of(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        """Primary key of a row given as column -> value.

        Raises:
            InvalidInput: a primary-key column is missing.
        """
        missing = [k for k in self.primary_key if k not in row]
        if missing:
            raise InvalidInput(f"missing primary-key column(s) {', '.join(missing)} for table "
                               f"{self.name!r}")
        return tuple(row[k] for k in self.primary_key)

    # -- rows -------------------------------------------------------------------------------

    def check_columns(self, row: Mapping[str, Any]) -> None:
        """Refuse unknown columns and ill-typed values (not missing ones)."""
        for name, v in row.items():
            col = self.by_name.get(name)
            if col is None:
                raise InvalidInput(f"table {self.name!r} has no column {name!r}")
            check_value(col, v)

    def full_row(self, row: Mapping[str, Any]) -> list[Value]:
        """Validate a whole row and return its values in column order (absent columns NULL).

        Raises:
            InvalidInput: unknown column, wrong type, or NULL in a NOT NULL column.
        """
        self.check_columns(row)
        values = [row.get(c.name) for c in self.columns]
        for c, v in zip(self.columns, values, strict=True):
            if v is None and c.not_null:
                raise InvalidInput(f"column {c.name!r} is NOT NULL and was not given")
        return values

    def layout(self, columns: Sequence[str]) -> tuple[tuple[int, Column, type | None], ...]:
        """For rows given as values in ``columns`` order (packed rows): each value's place in
        a row, its column and that column's Python type.

        Raises:
            InvalidInput: a column is unknown or named twice.
        """
        seen: set[str] = set()
        out = []
        for name in columns:
            col = self.by_name.get(name)
            if col is None:
                raise InvalidInput(f"table {self.name!r} has no column {name!r}")
            if name in seen:
                raise InvalidInput(f"column {name!r} is named twice")
            seen.add(name)
            out.append((self._index[name], col, _PY_TYPE.get(col.type)))  # type: ignore[attr-defined]
        return tuple(out)

    def row_from(self, layout: tuple[tuple[int, Column, type | None], ...],
                 values: Sequence[Any]) -> list[Value]:
        """A whole row, in column order, from values laid out by ``layout`` (absent columns
        NULL), validated as ``full_row`` validates a row.

        Raises:
            InvalidInput: a wrong number of values, a wrong type, or NULL in a NOT NULL column.
        """
        if len(values) != len(layout):
            raise InvalidInput(f"a packed row has {len(values)} value(s) for {len(layout)} "
                               f"column(s)")
        out: list[Value] = [None] * len(self.columns)
        for (i, col, t), v in zip(layout, values, strict=True):
            if v is None:
                continue
            if type(v) is not t or (t is int and not keycode.INT64_MIN <= v <= keycode.INT64_MAX):
                check_value(col, v)  # raises with the column's name (or passes a subclass)
            out[i] = v
        for i in self._not_null:  # type: ignore[attr-defined]
            if out[i] is None:
                raise InvalidInput(f"column {self.columns[i].name!r} is NOT NULL and was not "
                                   f"given")
        return out

    def key_from(self, values: list[Value]) -> tuple[Any, ...]:
        """The primary key of a whole row given in column order."""
        return tuple(values[i] for i in self._pk_index)  # type: ignore[attr-defined]

    def as_dict(self, values: list[Value], columns: list[str] | None = None) -> dict[str, Value]:
        """Row values (column order) as column -> value, projected onto ``columns`` if given."""
        if not columns:
            return {c.name: v for c, v in zip(self.columns, values, strict=True)}
        idx = self._index  # type: ignore[attr-defined]
        return {n: values[idx[n]] for n in columns}

    def projection(self, columns: list[str]) -> tuple[list[str], list[int] | None]:
        """The names a projection returns and their indexes in a row (None: all, in order).

        Raises:
            InvalidInput: a column is unknown.
        """
        if not columns:
            return [c.name for c in self.columns], None
        self.check_projection(columns)
        idx = self._index  # type: ignore[attr-defined]
        return list(columns), [idx[n] for n in columns]

    def check_projection(self, columns: list[str]) -> None:
        """Refuse a projection naming an unknown column."""
        for n in columns:
            if n not in self.by_name:
                raise InvalidInput(f"table {self.name!r} has no column {n!r}")

    # -- stored form ------------------------------------------------------------------------

    def encode(self) -> bytes:
        """Stored form of the schema."""
        return msgpack.packb({
            "name": self.name,
            "id": self.table_id,
            "columns": [[c.name, c.type, c.not_null] for c in self.columns],
            "pk": list(self.primary_key),
        })

    @staticmethod
    def decode(data: bytes) -> Schema:
        """Schema from its stored form.

        Raises:
            Corrupt: the bytes are not a schema record.
        """
        try:
            d = msgpack.unpackb(data)
            cols = [Column(n, t, bool(nn)) for n, t, nn in d["columns"]]
            schema = Schema.build(d["name"], cols, list(d["pk"]))
            if [c.not_null for c in schema.columns] != [c.not_null for c in cols]:
                raise InvalidInput("primary-key column stored as nullable")
            return schema.with_id(int(d["id"]))
        except (ValueError, KeyError, TypeError, AttributeError, InvalidInput,
                msgpack.UnpackException) as e:
            raise Corrupt(f"unreadable schema record: {e}") from e
