"""The commit log: one record per commit, at a position that only grows, replayable and bounded.

A record is written in the same write transaction as the rows it describes, so the log and the
data never disagree: a commit is in both or in neither. Positions start at 1 and have no gaps;
the last one lives in the meta key ``log_pos``. Each record is::

    msgpack({"ts": unix seconds, "node": node id,
             "changes": [[table, op, pk tuple], ...],    # what the commit did, by table
             "ops": [[0, key, value] | [1, key] | [2, lo, hi], ...]})   # how to replay it

``changes`` names the rows (op ``put``/``del``, or ``create_table``/``drop_table``) for readers
such as the change stream; a ``drop_table`` change's key is ``(the dropped schema record,)``
(``changes.py`` decodes the rows of a table dropped since a stream began with it). ``ops``
are the commit's changes to the *replicated* key space
(``keys.is_replicated``: catalog, rows, idempotency records, the table-id counter), in the order
they were made: a put of the new bytes, a delete, or a delete of the range ``lo <= key < hi``.
Applying the ops of every record after position P, in position order, to a consistent copy of
the replicated key space at P gives the replicated key space of the volume: replicas and
backups rest on this (``tests/unit/storage/test_storage_replay.py`` checks it on random
histories). Records of volumes older than this format have no ``ops`` (``Record.ops`` None) and
cannot be replayed; a replica starts from a copy made after them.

Retention: records before ``log_start`` (meta; 1 when absent) have been removed by
:func:`truncate`; ``log_bytes`` (meta) is the size of the records held (keys and values).
Reading from a position that is gone raises ``LogTruncated`` naming the oldest one held. Which
records may go is decided by ``retention.py``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from storage import keys
from storage.errors import Corrupt, LogTruncated
from storage.kv import Snapshot, WriteTxn, delete_range

LOG_POS = keys.META_LOG_POS
LOG_START = keys.META_LOG_START
LOG_BYTES = keys.META_LOG_BYTES
_U64 = struct.Struct(">Q")

PUT, DELETE, DELETE_RANGE = 0, 1, 2
Op = tuple[Any, ...]
"""One replay step: ``(PUT, key, value)``, ``(DELETE, key)`` or ``(DELETE_RANGE, lo, hi)``."""


@dataclass(frozen=True)
class Change:
    """One row change of a commit."""

    table: str
    op: str  # "put" | "del" | "create_table" | "drop_table"
    key: tuple[Any, ...]


@dataclass(frozen=True)
class Record:
    """One commit as the log holds it."""

    position: int
    ts: float
    node: str
    changes: tuple[Change, ...]
    ops: tuple[Op, ...] | None = None  # None: written before the log carried ops
    size: int = 0  # bytes held for it (key and value)


def _u64(txn: Snapshot, key: bytes, default: int) -> int:
    raw = txn.get(key)
    return default if raw is None else int(_U64.unpack(raw)[0])


def last_position(txn: Snapshot) -> int:
    """Position of the last commit (0 before the first)."""
    return _u64(txn, LOG_POS, 0)


def oldest_position(txn: Snapshot) -> int:
    """The first position still held (``last_position() + 1`` when none is)."""
    return _u64(txn, LOG_START, 1)


def held_bytes(txn: Snapshot) -> int:
    """The size of the records held, keys and values."""
    return _u64(txn, LOG_BYTES, 0)


def append(txn: WriteTxn, *, ts: float, node: str, changes: Sequence[Change],
           ops: Sequence[Op]) -> tuple[int, int]:
    """Append one record in write transaction ``txn``; return its position and its size.

    NB: ``log_bytes`` is not updated here (once per transaction is enough): the caller adds
    the sizes with :func:`add_bytes`.
    """
    pos = last_position(txn) + 1
    txn.put(LOG_POS, _U64.pack(pos))
    key = keys.log(pos)
    value = msgpack.packb({"ts": ts, "node": node,
                           "changes": [[c.table, c.op, list(c.key)] for c in changes],
                           "ops": ops}, use_bin_type=True)  # tuples pack as arrays
    txn.put(key, value)
    return pos, len(key) + len(value)


def put_stored(txn: WriteTxn, position: int, raw: bytes) -> int:
    """Keep another log's record at ``position`` as it was stored there (the next position
    here); return its size."""
    txn.put(LOG_POS, _U64.pack(position))
    key = keys.log(position)
    txn.put(key, raw)
    return len(key) + len(raw)


def add_bytes(txn: WriteTxn, delta: int) -> None:
    """Add ``delta`` (may be negative) to ``log_bytes``, never going below zero."""
    txn.put(LOG_BYTES, _U64.pack(max(0, held_bytes(txn) + delta)))


def read(txn: Snapshot, start: int | None = None) -> Iterator[Record]:
    """Records from position ``start`` on (None: the oldest held), in order.

    Raises:
        LogTruncated: ``start`` is before the oldest position held.
        Corrupt: a record is unreadable.
    """
    for k, v in _stored(txn, start, None):
        yield decode(k, v)


def read_stored(txn: Snapshot, start: int | None, limit: int) -> list[tuple[int, bytes]]:
    """Up to ``limit`` records from ``start`` on, as (position, stored bytes), to pass on as
    they are.

    Raises:
        LogTruncated: ``start`` is before the oldest position held.
    """
    return [(keys.log_position(k), v) for k, v in _stored(txn, start, limit)]


def _stored(txn: Snapshot, start: int | None, limit: int | None
            ) -> Iterator[tuple[bytes, bytes]]:
    oldest = oldest_position(txn)
    if start is None:
        start = oldest
    elif start < oldest:
        raise LogTruncated(f"commit-log position {start} is gone (the log is kept in bounds); "
                           f"the oldest position held is {oldest}", oldest=oldest)
    return txn.scan(keys.log(max(start, 0)), keys.kind_range(keys.LOG)[1], limit=limit)


def decode(k: bytes, v: bytes) -> Record:
    """The record stored as ``k``, ``v``.

    Raises:
        Corrupt: it is unreadable.
    """
    try:
        d = msgpack.unpackb(v, raw=False)
        ops = d.get("ops")
        return Record(keys.log_position(k), float(d["ts"]), str(d["node"]),
                      tuple(Change(t, op, tuple(key)) for t, op, key in d["changes"]),
                      None if ops is None else tuple(tuple(op) for op in ops),
                      len(k) + len(v))
    except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException) as e:
        raise Corrupt(f"unreadable commit-log record at {keys.log_position(k)}") from e


def header(v: bytes) -> tuple[float, str]:
    """The commit time and node of a stored record, without decoding the rest.

    Raises:
        Corrupt: it is unreadable.
    """
    try:
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(v)
        fields: dict[str, Any] = {}
        for _ in range(unpacker.read_map_header()):
            name = unpacker.unpack()
            if name in ("ts", "node"):
                fields[name] = unpacker.unpack()
                if len(fields) == 2:
                    break
            else:
                unpacker.skip()
        return float(fields["ts"]), str(fields["node"])
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
        raise Corrupt("unreadable commit-log record") from e


def apply_ops(txn: WriteTxn, ops: Sequence[Op]) -> None:
    """Replay ``ops`` in write transaction ``txn``.

    Raises:
        Corrupt: an op is malformed.
    """
    for op in ops:
        kind = op[0]
        if kind == PUT and len(op) == 3:
            txn.put(bytes(op[1]), bytes(op[2]))
        elif kind == DELETE and len(op) == 2:
            txn.delete(bytes(op[1]))
        elif kind == DELETE_RANGE and len(op) == 3:
            delete_range(txn, bytes(op[1]), None if op[2] is None else bytes(op[2]))
        else:
            raise Corrupt(f"unknown commit-log op {op[:1]!r}")


def truncate(txn: WriteTxn, before: int) -> tuple[int, int]:
    """Remove the records before position ``before`` (at most up to the last one); return how
    many went and their size in bytes."""
    oldest = oldest_position(txn)
    before = min(before, last_position(txn) + 1)
    if before <= oldest:
        return 0, 0
    doomed = list(txn.scan(keys.log(oldest), keys.log(before)))
    for k, _ in doomed:
        txn.delete(k)
    size = sum(len(k) + len(v) for k, v in doomed)
    txn.put(LOG_START, _U64.pack(before))
    add_bytes(txn, -size)
    return len(doomed), size


def restart_at(txn: WriteTxn, position: int) -> None:
    """Make an empty log whose next record is ``position + 1`` (a copy taken at
    ``position``)."""
    txn.put(LOG_POS, _U64.pack(position))
    txn.put(LOG_START, _U64.pack(position + 1))
    txn.put(LOG_BYTES, _U64.pack(0))
