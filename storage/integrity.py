"""An integrity check of a volume, read in one snapshot (``shardless verify VOLUME``).

Owns: :func:`check_volume`: the catalog decodes, every row belongs to a table and decodes
against its schema (arity, types, nullability, the key its values give is the key it is stored
under), the commit log held is gap-free from ``log_start`` to ``log_pos`` and every record
decodes, the identity decodes. Does not own repairing anything: it only reports.

NB: one snapshot for the whole walk (a consistent view while nodes write); on a large volume
it pins pages for as long as it runs, like ``CopyVolume``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from storage import commitlog, keycode, keys, rows, volume
from storage.catalog import Schema, check_value
from storage.errors import Corrupt, InvalidInput
from storage.kv import Snapshot
from storage.store import Store

MAX_PROBLEMS = 100
_U32 = struct.Struct(">I")


@dataclass
class VolumeReport:
    """What :func:`check_volume` found."""

    tables: int = 0
    rows: int = 0
    log_first: int = 0
    log_last: int = 0
    records: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)
        elif len(self.problems) == MAX_PROBLEMS:
            self.problems.append("(more problems not listed)")


def check_volume(store: Store) -> VolumeReport:
    """Walk the whole volume in one snapshot and report what does not decode or does not fit."""
    report = VolumeReport()
    with store.engine.read() as txn:
        schemas = _catalog(txn, report)
        _rows(txn, schemas, report)
        _log(txn, report)
        try:
            volume.read(txn)
        except Corrupt as e:
            report.problem(str(e))
    return report


def _catalog(txn: Snapshot, report: VolumeReport) -> dict[int, Schema]:
    out: dict[int, Schema] = {}
    for k, v in txn.scan(*keys.kind_range(keys.CATALOG)):
        name = k[1:].decode("utf-8", errors="replace")
        try:
            schema = Schema.decode(v)
        except Corrupt as e:
            report.problem(f"catalog entry {name!r}: {e}")
            continue
        if schema.name != name:
            report.problem(f"catalog entry {name!r} holds the schema of {schema.name!r}")
        if schema.table_id in out:
            report.problem(f"tables {out[schema.table_id].name!r} and {schema.name!r} share "
                           f"table id {schema.table_id}")
        out[schema.table_id] = schema
        report.tables += 1
    return out


def _rows(txn: Snapshot, schemas: dict[int, Schema], report: VolumeReport) -> None:
    n = keys.ROW_PREFIX_LEN
    for k, v in txn.scan(*keys.kind_range(keys.ROW)):
        report.rows += 1
        if len(k) < n:
            report.problem(f"row key {k!r} is too short")
            continue
        table_id = _U32.unpack_from(k, 1)[0]
        schema = schemas.get(table_id)
        if schema is None:
            report.problem(f"a row of table id {table_id}, which no table has")
            continue
        where = f"table {schema.name!r}, key {k[n:]!r}"
        try:
            pk = keycode.decode(k[n:])
            _, values = rows.decode(v)
        except (InvalidInput, Corrupt) as e:
            report.problem(f"{where}: {e}")
            continue
        if len(values) != len(schema.columns):
            report.problem(f"{where}: {len(values)} values for {len(schema.columns)} columns")
            continue
        try:
            for column, value in zip(schema.columns, values, strict=True):
                check_value(column, value)
        except InvalidInput as e:
            report.problem(f"{where}: {e}")
            continue
        if schema.key_from(values) != pk:
            report.problem(f"{where}: its values give the key {schema.key_from(values)!r}")


def _log(txn: Snapshot, report: VolumeReport) -> None:
    first, last = commitlog.oldest_position(txn), commitlog.last_position(txn)
    report.log_first, report.log_last = first, last
    expect = first
    for k, v in txn.scan(*keys.kind_range(keys.LOG)):
        pos = keys.log_position(k)
        if pos != expect:
            report.problem(f"commit log: position {pos} where {expect} was expected "
                           f"(positions {expect}..{pos - 1} missing)" if pos > expect else
                           f"commit log: position {pos} is before the oldest held ({first})")
        try:
            commitlog.decode(k, v)
        except Corrupt as e:
            report.problem(f"commit log: {e}")
        report.records += 1
        expect = pos + 1
    if expect != last + 1:
        report.problem(f"commit log: the records end at {expect - 1}, the last position is "
                       f"{last}")
