"""Storage on the shared volume: the engine seam (``kv.py``) with LMDB under it, key encoding,
catalog, rows, the commit log, fences, grants and idempotency records (``store.py``).

Knows nothing of gRPC, etcd or the lock manager. ``nodes`` opens storage with
:func:`open_volume` and sees only the names below. See ``storage/DESIGN.md``.
"""

from storage.catalog import COLUMN_TYPES, MAX_ROW_BYTES, Column, Schema, Value
from storage.commitlog import Change, Record
from storage.errors import (
    AlreadyExists,
    ConditionFailed,
    Corrupt,
    Fenced,
    InvalidInput,
    LogTruncated,
    MapFull,
    NotFound,
    ReadersFull,
    StorageError,
)
from storage.keycode import prefix_end
from storage.kv import Engine, Snapshot, WriteTxn
from storage.lmdb_env import DEFAULT_MAP_SIZE
from storage.retention import Cut, Retention
from storage.store import (
    ReadView,
    Store,
    WriteView,
    open_copy,
    open_volume,
    open_volume_from_copy,
)
from storage.volume import PRIMARY, REPLICA, Identity

__all__ = [
    "COLUMN_TYPES",
    "DEFAULT_MAP_SIZE",
    "MAX_ROW_BYTES",
    "PRIMARY",
    "REPLICA",
    "AlreadyExists",
    "Change",
    "Column",
    "ConditionFailed",
    "Corrupt",
    "Cut",
    "Engine",
    "Fenced",
    "Identity",
    "InvalidInput",
    "LogTruncated",
    "MapFull",
    "NotFound",
    "ReadView",
    "ReadersFull",
    "Record",
    "Retention",
    "Schema",
    "Snapshot",
    "StorageError",
    "Store",
    "Value",
    "WriteTxn",
    "WriteView",
    "open_copy",
    "open_volume",
    "open_volume_from_copy",
    "prefix_end",
]
