"""Conversions between the API's messages (``shardless.v1``) and storage's Python values.

Owns: Value <-> Python scalar, Row <-> dict, Key <-> tuple, TableSchema <-> ``storage.Schema``,
Mutation -> ``nodes.commit.Write``. Does no validation against schemas: storage does that.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgpack

from shardless.v1 import types_pb2 as pb
from storage import Column, InvalidInput, Schema, Value
from storage.keycode import INT64_BIAS, INT64_PACK, INT_TAG
from storage.rows import encode as stored_row

_TYPE_TO_PB = {
    "bool": pb.COLUMN_TYPE_BOOL,
    "int64": pb.COLUMN_TYPE_INT64,
    "double": pb.COLUMN_TYPE_DOUBLE,
    "string": pb.COLUMN_TYPE_STRING,
    "bytes": pb.COLUMN_TYPE_BYTES,
}
_PB_TO_TYPE = {v: k for k, v in _TYPE_TO_PB.items()}


def value(v: pb.Value) -> Value:
    """Python value of a Value message (no kind set: None)."""
    kind = v.WhichOneof("kind")
    return None if kind is None else getattr(v, kind)


def to_value(x: Value) -> pb.Value:
    """Value message for a Python value."""
    if x is None:
        return pb.Value()
    if isinstance(x, bool):
        return pb.Value(bool_value=x)
    if isinstance(x, int):
        return pb.Value(int_value=x)
    if isinstance(x, float):
        return pb.Value(double_value=x)
    if isinstance(x, str):
        return pb.Value(string_value=x)
    return pb.Value(bytes_value=bytes(x))


def row(r: pb.Row) -> dict[str, Value]:
    """Column -> value of a Row message (by key, not ``items()``: the map's items view is
    Python code, a third slower per row, measured)."""
    out: dict[str, Value] = {}
    cols = r.columns
    for name in cols:
        v = cols[name]
        kind = v.WhichOneof("kind")
        out[name] = None if kind is None else getattr(v, kind)
    return out


_FIELD = {bool: "bool_value", int: "int_value", float: "double_value", str: "string_value",
          bytes: "bytes_value"}


def fill_row(out: pb.Row, d: dict[str, Value], version: int = 0) -> pb.Row:
    """Set ``out`` (a Row message, usually a field of a response) to column -> value, in place:
    building a Row apart and copying it in costs twice as much (measured)."""
    out.version = version
    cols = out.columns
    for name, x in d.items():
        field = _FIELD.get(type(x))
        if field is not None:
            setattr(cols[name], field, x)
        elif x is None:
            cols[name]
        else:
            cols[name].CopyFrom(to_value(x))
    return out


def fill_row_values(out: pb.Row, names: list[str], values: list[Value],
                    indexes: list[int] | None, version: int) -> pb.Row:
    """Like :func:`fill_row`, from a stored row's values in column order (``names`` the
    columns returned, ``indexes`` their places in ``values``, None: all in order)."""
    out.version = version
    cols = out.columns
    picked = values if indexes is None else [values[i] for i in indexes]
    for name, x in zip(names, picked, strict=True):
        field = _FIELD.get(type(x))
        if field is not None:
            setattr(cols[name], field, x)
        elif x is None:
            cols[name]
        else:
            cols[name].CopyFrom(to_value(x))
    return out


def to_row(d: dict[str, Value], version: int = 0) -> pb.Row:
    """Row message for column -> value."""
    return fill_row(pb.Row(), d, version)


def key(k: pb.Key) -> tuple[Value, ...]:
    """Tuple of a Key message."""
    out = []
    for v in k.parts:
        kind = v.WhichOneof("kind")
        out.append(None if kind is None else getattr(v, kind))
    return tuple(out)


PACKED_NIL = b"\xc0"
"""A key without a row in packed BatchGet results (MessagePack nil)."""


def packed_array(parts: list[bytes]) -> bytes:
    """A MessagePack array of already-encoded elements (``PackedRows.rows``)."""
    n = len(parts)
    if n < 16:
        head = bytes((0x90 | n,))
    elif n < 1 << 16:
        head = b"\xdc" + n.to_bytes(2, "big")
    else:
        head = b"\xdd" + n.to_bytes(4, "big")
    return head + b"".join(parts)


def unpacked_rows(packed: pb.PackedRows) -> tuple[tuple[str, ...], list[list[Value]]]:
    """The columns and the rows' values of packed rows sent to be written.

    Raises:
        InvalidInput: ``rows`` is not a MessagePack array of ``[version, [value, ...]]``.
    """
    try:
        got = msgpack.unpackb(packed.rows, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise InvalidInput(f"packed rows are not valid MessagePack: {e}") from e
    if not isinstance(got, list):
        raise InvalidInput("packed rows must be a MessagePack array")
    out = []
    for i, r in enumerate(got):
        if not (isinstance(r, list) and len(r) == 2 and isinstance(r[1], list)):
            raise InvalidInput(f"packed row {i} is not [version, [value, ...]]")
        out.append(r[1])
    return tuple(packed.columns), out


def packed_row(version: int, values: list[Value]) -> bytes:
    """One row of ``PackedRows.rows``: ``[version, [values]]``, storage's own layout (so that
    stored rows go out as they are), made by storage's own encoder."""
    return stored_row(version, values)


def encoded_keys(schema: Schema, ks: Iterable[pb.Key]) -> list[bytes]:
    """``schema.check_key(key(k))`` of each Key message (validated and encoded), with a fast
    path for the common table whose primary key is one int64 column: a part of the int kind is
    in range by construction (the message's int64), so it is encoded directly. Anything else
    takes the general path, with its checks and errors."""
    pks = schema.pk_columns
    check = schema.check_key
    if len(pks) != 1 or pks[0].type != "int64":
        return [check(key(k)) for k in ks]
    out = []
    pack, tag, bias = INT64_PACK, INT_TAG, INT64_BIAS
    for k in ks:
        parts = k.parts
        if len(parts) == 1:
            p = parts[0]
            if p.WhichOneof("kind") == "int_value":
                out.append(tag + pack(p.int_value + bias))  # encode_int64, inlined
                continue
        out.append(check(key(k)))
    return out


def schema(s: pb.TableSchema) -> Schema:
    """Validated storage schema of a TableSchema message.

    Raises:
        InvalidInput: the definition is not valid.
    """
    cols = []
    for c in s.columns:
        t = _PB_TO_TYPE.get(c.type)
        if t is None:
            raise InvalidInput(f"column {c.name!r} has no valid type")
        cols.append(Column(c.name, t, c.not_null))
    return Schema.build(s.name, cols, list(s.primary_key))


def to_schema(s: Schema) -> pb.TableSchema:
    """TableSchema message of a storage schema."""
    return pb.TableSchema(
        name=s.name,
        columns=[pb.Column(name=c.name, type=_TYPE_TO_PB[c.type], not_null=c.not_null)
                 for c in s.columns],
        primary_key=list(s.primary_key))


def columns(names: Any) -> list[str]:
    """Projection list of a repeated string field."""
    return list(names)
