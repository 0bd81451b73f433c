"""The commit log: one record per commit, at a position that only grows.

A record is written in the same write transaction as the rows it describes, so the log and
the data never disagree: a commit is in both or in neither. The last position lives in the meta
key ``log_pos``; positions start at 1 and have no gaps. Each record is
``msgpack({"ts": unix seconds, "node": node id, "changes": [[table, op, pk tuple], ...]})`` with
op ``"put"`` or ``"del"`` (row images are read from the rows; the change stream and replication
that need more come in later issues).

NB: the log has no retention yet; it grows with every commit (see docs/storage.md).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

from storage import keys
from storage.errors import Corrupt
from storage.kv import Snapshot, WriteTxn

LOG_POS = keys.meta("log_pos")
_U64 = struct.Struct(">Q")


@dataclass(frozen=True)
class Change:
    """One row change of a commit."""

    table: str
    op: str  # "put" | "del"
    key: tuple[Any, ...]


@dataclass(frozen=True)
class Record:
    """One commit as the log holds it."""

    position: int
    ts: float
    node: str
    changes: tuple[Change, ...]


def last_position(txn: Snapshot) -> int:
    """Position of the last commit (0 before the first)."""
    raw = txn.get(LOG_POS)
    return 0 if raw is None else int(_U64.unpack(raw)[0])


def append(txn: WriteTxn, *, ts: float, node: str, changes: list[Change]) -> int:
    """Append one record in ``txn`` (a write transaction) and return its position."""
    pos = last_position(txn) + 1
    txn.put(LOG_POS, _U64.pack(pos))
    txn.put(keys.log(pos), msgpack.packb(
        {"ts": ts, "node": node, "changes": [[c.table, c.op, list(c.key)] for c in changes]},
        use_bin_type=True))
    return pos


def read(txn: Snapshot, start: int = 1) -> Iterator[Record]:
    """Records from position ``start`` on, in order."""
    for k, v in txn.scan(keys.log(max(start, 0)), keys.kind_range(keys.LOG)[1]):
        try:
            d = msgpack.unpackb(v, raw=False)
            yield Record(keys.log_position(k), float(d["ts"]), str(d["node"]),
                         tuple(Change(t, op, tuple(key)) for t, op, key in d["changes"]))
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
            raise Corrupt(f"unreadable commit-log record at {keys.log_position(k)}") from e
