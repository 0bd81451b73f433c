"""The only module that imports ``lmdb``: one environment per process on the shared volume.

Owns: opening the environment (map size, reader slots, durability flags), freeing reader slots
left by dead processes, and translating ``lmdb.Error`` into ``storage`` errors. Does not own: the
meaning of keys (``keys.py``) or of values.

NB: LMDB allows one write transaction at a time across all processes of the host; a process must
open the environment once and share it between its threads, and must never fork while it holds
it (spawn instead). The environment is opened with ``sync=True`` and ``metasync=True``: a write
transaction's commit returns only after its data is on disk, which is what makes a commit
durable before it is acknowledged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import lmdb

from storage.errors import MapFull, StorageError

DEFAULT_MAP_SIZE = 8 << 30  # 8 GiB of address space; the file grows only as data is written
DEFAULT_MAX_READERS = 1024


class LmdbEnv:
    """An LMDB environment in ``path`` (a directory, created if missing)."""

    def __init__(self, path: str, *, map_size: int = DEFAULT_MAP_SIZE,
                 max_readers: int = DEFAULT_MAX_READERS) -> None:
        os.makedirs(path, exist_ok=True)
        self.path = path
        try:
            self._env = lmdb.open(path, map_size=map_size, max_readers=max_readers,
                                  subdir=True, sync=True, metasync=True, lock=True,
                                  readahead=False, max_dbs=0)
        except lmdb.Error as e:
            raise StorageError(f"cannot open LMDB environment at {path}: {e}") from e
        self.reader_check()

    def reader_check(self) -> int:
        """Free reader slots held by dead processes; return how many were freed."""
        return int(self._env.reader_check())

    @contextlib.contextmanager
    def read_txn(self) -> Iterator[Any]:
        """A read-only snapshot transaction, aborted on exit."""
        try:
            txn = self._env.begin(write=False, buffers=False)
        except lmdb.Error as e:
            raise StorageError(f"cannot begin a read transaction: {e}") from e
        try:
            yield txn
        except lmdb.Error as e:
            raise StorageError(f"read failed: {e}") from e
        finally:
            txn.abort()

    @contextlib.contextmanager
    def write_txn(self) -> Iterator[Any]:
        """A write transaction: committed (durably) on normal exit, aborted on an exception.

        Raises:
            MapFull: the map or the disk is full; nothing was written.
            StorageError: any other LMDB failure; nothing was written.
        """
        try:
            txn = self._env.begin(write=True, buffers=False)
        except lmdb.Error as e:
            raise StorageError(f"cannot begin a write transaction: {e}") from e
        try:
            yield txn
        except lmdb.MapFullError as e:
            txn.abort()
            raise MapFull("the volume's LMDB map is full; grow --map-size or free space") from e
        except lmdb.Error as e:
            txn.abort()
            raise StorageError(f"write failed: {e}") from e
        except BaseException:
            txn.abort()
            raise
        try:
            txn.commit()
        except lmdb.MapFullError as e:
            raise MapFull("the volume's LMDB map is full; grow --map-size or free space") from e
        except lmdb.DiskError as e:
            raise MapFull(f"the volume's disk refused the write: {e}") from e
        except lmdb.Error as e:
            raise StorageError(f"commit failed: {e}") from e

    def stat(self) -> dict[str, int]:
        """LMDB's environment info (map size, last page, readers in use...)."""
        return dict(self._env.info())

    def close(self) -> None:
        """Close the environment; no transaction may be open."""
        self._env.close()
