"""The commit log as row changes: what a change stream delivers.

Owns: turning one commit-log record (its replay ``ops``, ``commitlog.py``) into the changes a
consumer sees, each with its place: ``(position, index)``, the record's position and the index of
the op in the record. That pair totally orders every change the log holds and never changes, so
a consumer that resumes after the last pair it saw misses nothing and sees nothing twice. Pure;
no I/O (the caller reads the records and finds the schemas of dropped tables, below).

The changes of a record, in op order:

- a put of a row key: ``put``, with the row's new image (version = position);
- a delete of a row key: ``delete``, with the key;
- a put of a catalog key: ``create_table``, with the schema;
- a delete of a catalog key: ``drop_table`` (its rows' range delete is part of it, not a
  change of its own);
- nothing else (idempotency records, counters) is a change.

Rows are decoded with the schema of their table id. :class:`Schemas` starts from the catalog a
stream starts with and follows the record's own catalog ops; a table that existed when the
stream's first position was committed but has been dropped since is in neither, so
``DropTable`` records carry the dropped schema (the ``drop_table`` change's key is
``(schema record,)``) and the caller looks forward for it (:meth:`Schemas.learn_dropped`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from storage import keycode, keys, rows
from storage.catalog import Schema
from storage.commitlog import DELETE, PUT, Record
from storage.errors import Corrupt

PUT_ROW, DELETE_ROW, CREATE_TABLE, DROP_TABLE = "put", "delete", "create_table", "drop_table"
_U32 = struct.Struct(">I")


@dataclass(frozen=True)
class RowChange:
    """One change, at ``(position, index)``."""

    position: int
    index: int
    ts: float
    kind: str
    table: str
    key: tuple[Any, ...] = ()
    encoded_key: bytes = b""
    values: dict[str, Any] | None = None  # put: the new row
    schema: Schema | None = None  # create_table: the table


class Schemas:
    """Table schemas by id, for decoding rows: the catalog a stream started from, the tables
    created since (from the records' catalog ops) and dropped tables learnt from their drop
    records."""

    def __init__(self, current: Iterable[Schema] = ()) -> None:
        self._by_id: dict[int, Schema] = {s.table_id: s for s in current}
        self._by_name: dict[str, Schema] = {s.name: s for s in current}

    def get(self, table_id: int) -> Schema | None:
        return self._by_id.get(table_id)

    def add(self, schema: Schema) -> None:
        self._by_id[schema.table_id] = schema
        self._by_name[schema.name] = schema

    def named(self, name: str) -> Schema | None:
        return self._by_name.get(name)

    def learn_dropped(self, record: Record) -> None:
        """Learn the schemas a drop record carries."""
        for c in record.changes:
            if c.op == DROP_TABLE and c.key and isinstance(c.key[0], bytes):
                try:
                    schema = Schema.decode(c.key[0])
                except Corrupt:
                    continue
                self._by_id.setdefault(schema.table_id, schema)


def record_changes(record: Record, schemas: Schemas, *,
                   find_dropped: Callable[[int], None] = lambda table_id: None
                   ) -> list[RowChange]:
    """The changes of ``record``, in op order; ``schemas`` follows its catalog ops.

    ``find_dropped(table_id)`` is called for a row of a table ``schemas`` does not know: it
    should feed ``schemas`` the drop records after this one (:meth:`Schemas.learn_dropped`).
    A row whose schema stays unknown (a table dropped before records carried schemas) comes
    with ``values`` None and an empty key.

    Raises:
        Corrupt: a row or schema in the record does not decode.
    """
    if record.ops is None:
        raise Corrupt(f"commit-log record {record.position} has no replay ops (written by an "
                      f"older version): it cannot be streamed")
    out: list[RowChange] = []
    pos, ts = record.position, record.ts
    for i, op in enumerate(record.ops):
        kind, k = op[0], op[1]
        prefix = k[:1]
        if prefix == keys.ROW and kind in (PUT, DELETE):
            table_id = _U32.unpack(k[1:5])[0]
            schema = schemas.get(table_id)
            if schema is None:
                find_dropped(table_id)
                schema = schemas.get(table_id)
            encoded = k[keys.ROW_PREFIX_LEN:]
            if schema is None:
                out.append(RowChange(pos, i, ts, PUT_ROW if kind == PUT else DELETE_ROW,
                                     f"#{table_id}", (), encoded))
                continue
            key = keycode.decode(encoded)
            if kind == PUT:
                _version, values = rows.decode(op[2])
                names = [c.name for c in schema.columns]
                out.append(RowChange(pos, i, ts, PUT_ROW, schema.name, key, encoded,
                                     dict(zip(names, values, strict=False))))
            else:
                out.append(RowChange(pos, i, ts, DELETE_ROW, schema.name, key, encoded))
        elif prefix == keys.CATALOG and kind == PUT:
            schema = Schema.decode(op[2])
            schemas.add(schema)
            out.append(RowChange(pos, i, ts, CREATE_TABLE, schema.name, schema=schema))
        elif prefix == keys.CATALOG and kind == DELETE:
            out.append(RowChange(pos, i, ts, DROP_TABLE, k[1:].decode("utf-8")))
    return out
