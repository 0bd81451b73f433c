"""The whole key space in one place.

Every key starts with a one-byte kind prefix, so kinds never interleave and each kind can be
scanned as a range:

========  ======================================  =============================================
prefix    key                                     value
========  ======================================  =============================================
0x00      META + name (ascii)                     msgpack scalar (counters, format version)
0x01      CATALOG + table name (utf-8)            msgpack schema record (``catalog.py``)
0x02      ROW + table id (u32 BE) + keycode(pk)   msgpack ``[version, [values...]]`` (``rows.py``)
0x03      LOG + position (u64 BE)                 msgpack commit record (``commitlog.py``)
0x04      FENCE + session lease id (u64 BE)       msgpack ``{"ts", "by"}`` (``fence.py``)
0x05      IDEMPOTENCY + client key (utf-8)        msgpack ``{"ts", "result"}``
0x06      GRANT + resource + 0x00 + entry tag     msgpack ``[lease, entry value]`` (``grants.py``)
0x07      LOCAL + name (ascii)                    msgpack map: this copy's own identity
                                                  (``volume.py``)
========  ======================================  =============================================

Replicated: what replicas and backups copy and the commit log's ops replay (``is_replicated``):
catalog, rows, idempotency records and the meta values but the log's own (``LOG_META``). Not
replicated: the log itself (each copy keeps its own, at the same positions), fence records and
published grants (they belong to the sessions of the nodes on one volume), and the copy's own
identity (``LOCAL``: which volume this is, primary or replica).

Table ids are never reused, so rows of a dropped table can never resurface under a new table of
the same name. Every engine takes keys of ``kv.MIN_KEY_BYTES`` (511, LMDB's limit);
``MAX_ENCODED_PK`` leaves room for the row prefix.
"""

from __future__ import annotations

import struct

from storage.kv import MIN_KEY_BYTES

META = b"\x00"
CATALOG = b"\x01"
ROW = b"\x02"
LOG = b"\x03"
FENCE = b"\x04"
IDEMPOTENCY = b"\x05"
GRANT = b"\x06"
LOCAL = b"\x07"

ROW_PREFIX_LEN = 5
MAX_ENCODED_PK = MIN_KEY_BYTES - ROW_PREFIX_LEN

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def is_replicated(key: bytes) -> bool:
    """Whether ``key`` belongs to the replicated key space (see the module docstring)."""
    return key[:1] in REPLICATED_KINDS and key not in LOG_META


def kind_range(kind: bytes) -> tuple[bytes, bytes]:
    """The bounds ``(lo, hi)`` of every key of one kind (a one-byte prefix above)."""
    return kind, bytes([kind[0] + 1])


def meta(name: str) -> bytes:
    """Key of one metadata value (a counter or the format version)."""
    return META + name.encode("ascii")


def catalog(table: str) -> bytes:
    """Key of a table's schema record."""
    return CATALOG + table.encode("utf-8")


def row_prefix(table_id: int) -> bytes:
    """Prefix shared by every row key of one table."""
    return ROW + _U32.pack(table_id)


def row(table_id: int, encoded_pk: bytes) -> bytes:
    """Key of one row, from its table id and its keycode-encoded primary key."""
    return ROW + _U32.pack(table_id) + encoded_pk


def log(position: int) -> bytes:
    """Key of the commit-log record at ``position``."""
    return LOG + _U64.pack(position)


def log_position(key: bytes) -> int:
    """Position encoded in a commit-log key."""
    return int(_U64.unpack_from(key, 1)[0])


def fence(lease_id: int) -> bytes:
    """Key of the fence record of one session."""
    return FENCE + _U64.pack(lease_id)


def grant_prefix(resource: str) -> bytes:
    """Prefix of the published grants on one lock resource (``grants.py``)."""
    return GRANT + resource.encode("utf-8") + b"\x00"


def grant(resource: str, tag: str) -> bytes:
    """Key of one published grant: a lock entry ``tag`` on ``resource``."""
    return grant_prefix(resource) + tag.encode("utf-8")


VOLUME_IDENTITY = LOCAL + b"identity"
"""This copy's identity (``volume.py``); never copied to another volume."""

META_LOG_POS = meta("log_pos")
META_LOG_START = meta("log_start")
META_LOG_BYTES = meta("log_bytes")
LOG_META = frozenset((META_LOG_POS, META_LOG_START, META_LOG_BYTES))
"""The commit log's own meta values: each copy of the volume keeps its own."""
REPLICATED_KINDS = frozenset((META, CATALOG, ROW, IDEMPOTENCY))
