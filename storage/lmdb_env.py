"""The only module that imports ``lmdb``: one environment per process on the shared volume.

Owns: opening the environment (map size, reader slots, durability flags), freeing reader slots
left by dead processes, and translating ``lmdb.Error`` into ``storage`` errors. Does not own: the
meaning of keys (``keys.py``) or of values.

NB: LMDB allows one write transaction at a time across all processes of the host; a process must
open the environment once and share it between its threads, and must never fork while it holds
it (spawn instead).

Growing the map while nodes run: a process opened with a bigger ``map_size`` writes that size into
the environment's meta page at its first commit. Another process then gets ``MapResizedError``
when it begins a transaction (or ``MapFullError`` when it writes past its own, smaller map), and
may take up the new size with ``set_mapsize(0)``, but only while none of its transactions is
open. :class:`_MapGate` gives that moment: every transaction holds the gate shared, and
:meth:`LmdbEnv.adopt_map_size` takes it exclusively (giving up after ``ADOPT_WAIT_S`` rather than
wait for a long scan forever; the next MapFull or MapResized tries again). Read transactions
adopt by themselves; writers call :meth:`LmdbEnv.adopt_map_size` after ``MapFull`` and retry if
the map grew.

The environment is opened with ``sync=True`` and ``metasync=True``: a write
transaction's commit returns only after its data is on disk, which is what makes a commit
durable before it is acknowledged.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import lmdb

from storage.errors import MapFull, StorageError

DEFAULT_MAP_SIZE = 8 << 30  # 8 GiB of address space; the file grows only as data is written
DEFAULT_MAX_READERS = 1024
ADOPT_WAIT_S = 2.0


class _MapGate:
    """A readers-writer gate: transactions share it; adopting a new map size excludes them.

    A transaction may be opened in one thread and closed in another (a scan's snapshot), so the
    gate counts holders, not threads. A waiting resize gets a short head start
    (``HEAD_START_S``) over new transactions, never an unbounded one: a thread that already
    holds the gate and opens another transaction is delayed at most that long, and the resize
    gives up after its own timeout if transactions keep it waiting.
    """

    HEAD_START_S = 0.2

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holders = 0
        self._waiting = 0
        self._exclusive = False

    def acquire_shared(self) -> None:
        """Hold the gate shared (waits while a resize holds it, and gives a waiting resize its
        head start)."""
        with self._cond:
            if self._waiting:
                self._cond.wait_for(lambda: not self._waiting, timeout=self.HEAD_START_S)
            if self._exclusive:
                self._cond.wait_for(lambda: not self._exclusive)
            self._holders += 1

    def release_shared(self) -> None:
        """Let go of a shared hold (wakes a waiting resize when the last holder leaves)."""
        with self._cond:
            self._holders -= 1
            if self._waiting and not self._holders:
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self, timeout_s: float) -> Iterator[bool]:
        """Yield True once no transaction of this process is open, or False after
        ``timeout_s``."""
        with self._cond:
            self._waiting += 1
            try:
                got = self._cond.wait_for(lambda: not self._holders and not self._exclusive,
                                          timeout=timeout_s)
            finally:
                self._waiting -= 1
                self._cond.notify_all()
            if got:
                self._exclusive = True
        try:
            yield got
        finally:
            if got:
                with self._cond:
                    self._exclusive = False
                    self._cond.notify_all()


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
        self._gate = _MapGate()
        self.reader_check()

    def map_size(self) -> int:
        """The map size this process uses now, in bytes."""
        return int(self._env.info()["map_size"])

    def adopt_map_size(self, timeout_s: float = ADOPT_WAIT_S) -> bool:
        """Take up the map size another process wrote to the meta page, once no transaction
        of this process is open; return whether the map grew.

        Raises:
            StorageError: LMDB refused.
        """
        with self._gate.exclusive(timeout_s) as ready:
            if not ready:
                return False
            before = self.map_size()
            try:
                self._env.set_mapsize(0)
            except lmdb.Error as e:
                raise StorageError(f"cannot adopt the volume's new map size: {e}") from e
            return self.map_size() > before

    def _begin(self, write: bool) -> Any:
        """Begin a transaction (the caller holds the gate shared)."""
        return self._env.begin(write=write, buffers=False)

    def reader_check(self) -> int:
        """Free reader slots held by dead processes; return how many were freed."""
        return int(self._env.reader_check())

    def _shared_begin(self, write: bool) -> Any:
        """Hold the gate shared and begin a transaction, adopting a grown map on the way; the
        caller releases the gate after the transaction ends."""
        for attempt in range(3):
            self._gate.acquire_shared()
            try:
                return self._begin(write)
            except lmdb.MapResizedError:
                self._gate.release_shared()
            except lmdb.Error as e:
                self._gate.release_shared()
                kind = "write" if write else "read"
                raise StorageError(f"cannot begin a {kind} transaction: {e}") from e
            except BaseException:
                self._gate.release_shared()
                raise
            # Another process grew the map: adopt it outside the gate, then begin again.
            if not self.adopt_map_size() and attempt:
                time.sleep(0.05)
        raise StorageError("cannot begin a transaction: the map was resized by another "
                           "process and this one could not adopt the new size")

    def read_txn(self) -> _ReadTxn:
        """A read-only snapshot transaction, aborted on exit (a context manager)."""
        return _ReadTxn(self)

    def write_txn(self) -> _WriteTxn:
        """A write transaction: committed (durably) on normal exit, aborted on an exception
        (a context manager).

        Raises:
            MapFull: the map or the disk is full; nothing was written.
            StorageError: any other LMDB failure; nothing was written.
        """
        return _WriteTxn(self)

    def _full_message(self) -> str:
        return (f"the volume is full (LMDB map of {self.map_size() >> 20} MiB); restart a node "
                f"with a bigger --map-size (the others take it up) or free space")

    def stat(self) -> dict[str, int]:
        """LMDB's environment info (map size, last page, readers in use...)."""
        return dict(self._env.info())

    def close(self) -> None:
        """Close the environment; no transaction may be open."""
        self._env.close()


class _ReadTxn:
    """``LmdbEnv.read_txn``: a class rather than a generator, for the cost of every read."""

    __slots__ = ("_env", "_txn")

    def __init__(self, env: LmdbEnv) -> None:
        self._env = env

    def __enter__(self) -> Any:
        self._txn = self._env._shared_begin(write=False)
        return self._txn

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            self._txn.abort()
        finally:
            self._env._gate.release_shared()
        if isinstance(exc, lmdb.Error):
            raise StorageError(f"read failed: {exc}") from exc


class _WriteTxn:
    """``LmdbEnv.write_txn``; see there."""

    __slots__ = ("_env", "_txn")

    def __init__(self, env: LmdbEnv) -> None:
        self._env = env

    def __enter__(self) -> Any:
        self._txn = self._env._shared_begin(write=True)
        return self._txn

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        env, txn = self._env, self._txn
        try:
            if exc is not None:
                txn.abort()
                if isinstance(exc, lmdb.MapFullError):
                    raise MapFull(env._full_message()) from exc
                if isinstance(exc, lmdb.Error):
                    raise StorageError(f"write failed: {exc}") from exc
                return
            try:
                txn.commit()
            except lmdb.MapFullError as e:
                raise MapFull(env._full_message()) from e
            except lmdb.DiskError as e:
                raise MapFull(f"the volume's disk refused the write: {e}") from e
            except lmdb.Error as e:
                raise StorageError(f"commit failed: {e}") from e
        finally:
            env._gate.release_shared()
