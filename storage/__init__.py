"""Storage on the shared volume: LMDB, key encoding, catalog, rows and the commit log.

Knows nothing of gRPC, etcd or the lock manager. See ``storage/DESIGN.md``.
"""

from storage.catalog import COLUMN_TYPES, MAX_ROW_BYTES, Column, Schema, Value
from storage.commitlog import Change, Record
from storage.engine import ReadView, Store, WriteView
from storage.errors import (
    AlreadyExists,
    ConditionFailed,
    Corrupt,
    Fenced,
    InvalidInput,
    MapFull,
    NotFound,
    StorageError,
)
from storage.keycode import prefix_end

__all__ = [
    "COLUMN_TYPES",
    "MAX_ROW_BYTES",
    "AlreadyExists",
    "Change",
    "Column",
    "ConditionFailed",
    "Corrupt",
    "Fenced",
    "InvalidInput",
    "MapFull",
    "NotFound",
    "ReadView",
    "Record",
    "Schema",
    "StorageError",
    "Store",
    "Value",
    "WriteView",
    "prefix_end",
]
