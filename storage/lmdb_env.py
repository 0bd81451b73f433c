"""``LmdbEngine``: the engine (``kv.Engine``) on the shared volume, and the only module that
imports ``lmdb``.

Owns: opening the environment (map size, reader slots, durability flags), snapshots, write
transactions and cursor walks over it, growing the map, freeing reader slots left by dead
processes, and translating ``lmdb.Error`` into ``storage`` errors. Does not own: the meaning of
keys (``keys.py``) or of values.

LMDB keeps the contract of ``kv.py`` by itself: one write transaction at a time across all
processes of the host (a lock in the lock file), MVCC snapshots for readers, and a commit that
returns after its pages and meta page are synced.

NB: LMDB allows one write transaction at a time across all processes of the host; a process must
open the environment once and share it between its threads, and must never fork while it holds
it (spawn instead).

Growing the map while nodes run: a process opened with a bigger ``map_size`` writes that size into
the environment's meta page at its first commit. Another process then gets ``MapResizedError``
when it begins a transaction (or ``MapFullError`` when it writes past its own, smaller map), and
may take up the new size with ``set_mapsize(0)``, but only while none of its transactions is
open. :class:`_MapGate` gives that moment: every transaction holds the gate shared, and
:meth:`LmdbEngine.adopt_map_size` takes it exclusively (giving up after ``ADOPT_WAIT_S`` rather than
wait for a long scan forever; the next MapFull or MapResized tries again). Read transactions
adopt by themselves; writers call :meth:`LmdbEngine.make_room` after ``MapFull`` and run again if
the map grew (``Store.transact`` does).

The environment is opened with ``sync=True`` and ``metasync=True``: a write
transaction's commit returns only after its data is on disk, which is what makes a commit
durable before it is acknowledged.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import lmdb

from storage.errors import MapFull, ReadersFull, StorageError

DEFAULT_MAP_SIZE = 8 << 30  # 8 GiB of address space; the file grows only as data is written
# The volume's reader table, shared by its processes: a node process holds at most its
# snapshot and stream limits plus its worker threads (nodes/limits.py), about 350 slots with
# the defaults, so 8192 leave room for some 20 processes on one volume. 64 bytes a slot; LMDB
# scans only the slots ever used. Set when the first process opens the volume.
DEFAULT_MAX_READERS = 8192
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


class LmdbEngine:
    """An LMDB environment in ``path`` (a directory, created if missing): see ``kv.Engine``."""

    max_key_bytes = 511
    """LMDB's compiled-in limit (``Environment.max_key_size()``), checked when opening."""

    def __init__(self, path: str, *, map_size: int = DEFAULT_MAP_SIZE,
                 max_readers: int = DEFAULT_MAX_READERS, copy_file: bool = False) -> None:
        """Open the environment in directory ``path``; ``copy_file``: instead, open the lone
        data file ``path`` (a copy made by :meth:`copy_to`) read-only and without a lock file,
        so that reading it leaves its directory as it was (a backup's)."""
        self.path = path
        self._is_copy = copy_file
        try:
            if copy_file:
                self._env = lmdb.open(path, subdir=False, readonly=True, lock=False,
                                      readahead=False, max_dbs=0)
            else:
                os.makedirs(path, exist_ok=True)
                self._env = lmdb.open(path, map_size=map_size, max_readers=max_readers,
                                      subdir=True, sync=True, metasync=True, lock=True,
                                      readahead=False, max_dbs=0)
        except lmdb.Error as e:
            raise StorageError(f"cannot open LMDB environment at {path}: {e}") from e
        if self._env.max_key_size() < self.max_key_bytes:
            self._env.close()
            raise StorageError(f"this LMDB build takes keys of {self._env.max_key_size()} "
                               f"bytes at most; Shardless needs {self.max_key_bytes}")
        self._gate = _MapGate()
        if not copy_file:
            self.reader_check()

    # kv.Engine

    def read(self) -> _ReadTxn:
        """A read-only snapshot, released on exit (a context manager)."""
        return _ReadTxn(self)

    def write(self) -> _WriteTxn:
        """A write transaction: committed (durably) on normal exit, aborted on an exception
        (a context manager).

        Raises:
            MapFull: the map or the disk is full; nothing was written.
            StorageError: any other LMDB failure; nothing was written.
        """
        return _WriteTxn(self)

    def make_room(self) -> bool:
        """After ``MapFull``: take up a bigger map size that another process set; return
        whether the map grew (then the write may be run again)."""
        return self.adopt_map_size()

    def version(self) -> int:
        """LMDB's last committed transaction id (from the meta pages; no snapshot)."""
        return int(self._env.info()["last_txnid"])

    def housekeeping(self) -> dict[str, int]:
        """Free reader slots held by dead processes."""
        if self._is_copy:
            return {}
        return {"stale reader slots freed": self.reader_check()}

    def info(self) -> dict[str, int]:
        """LMDB's environment info (``map_size``, ``last_pgno``, ``max_readers``...), and:
        ``map_used_bytes`` (pages in use up to the last one), ``file_bytes`` and
        ``disk_bytes`` (the data file's length and the blocks it takes on disk: LMDB's file
        is sparse), and the reader table's slots (``reader_slots_held``: bound to a process,
        reading or not; ``reader_slots_reading``: in a snapshot now; each also ``_here``, for
        this process). NB: reading the reader table walks every slot ever used; cheap for a
        scrape, not for every call."""
        out = {k: int(v) for k, v in self._env.info().items()}
        out["page_size"] = int(self._env.stat()["psize"])
        out["map_used_bytes"] = (out["last_pgno"] + 1) * out["page_size"]
        try:
            st = os.stat(os.path.join(self.path, "data.mdb"))
            out["file_bytes"], out["disk_bytes"] = st.st_size, st.st_blocks * 512
        except OSError:
            pass
        out.update(reader_slots(self._env.readers(), os.getpid()))
        return out

    def close(self) -> None:
        """Close the environment; no transaction may be open."""
        self._env.close()

    def copy_to(self, path: str, on_attempt: Callable[[], None] | None = None) -> None:
        """Write a consistent copy of the environment to the new file ``path`` and fsync it:
        LMDB's own copy (``mdb_env_copy2``, not compacted), of one read snapshot taken when
        it starts, so writers go on meanwhile. The copy is itself an LMDB data file (free pages
        included), opened by ``LmdbEngine(path, copy_file=True)``.

        NB: py-lmdb ties a copy to a read transaction of the caller's only when compacting,
        so the snapshot's position cannot be read beside it: read it from the copy (which is
        that one snapshot). The snapshot pins the volume's pages for as long as the copy runs.
        The file is written from its start to its end, once per attempt: ``on_attempt`` is
        called as each attempt begins, the file empty (a copy is begun again, from an empty
        file, when another process grew the map), so that a reader following the file (the
        backup's checksum, ``storage/backup.py``) starts over.

        Raises:
            StorageError: the file exists, or LMDB or the disk refused (nothing is left).
        """
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as e:
            raise StorageError(f"cannot create {path}: {e}") from e
        try:
            for attempt in range(3):
                if on_attempt is not None:
                    on_attempt()
                self._gate.acquire_shared()  # the copy's read txn, like any other
                try:
                    self._env.copyfd(fd, compact=False)
                    break
                except lmdb.MapResizedError:
                    pass
                except lmdb.Error as e:
                    raise StorageError(f"cannot copy the volume to {path}: {e}") from e
                finally:
                    self._gate.release_shared()
                # Another process grew the map: adopt it, then start the copy again.
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                if not self.adopt_map_size() and attempt:
                    time.sleep(0.05)
            else:
                raise StorageError("cannot copy the volume: the map was resized by another "
                                   "process and this one could not adopt the new size")
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        os.close(fd)

    # LMDB's own

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

    def reader_check(self) -> int:
        """Free reader slots held by dead processes; return how many were freed."""
        return int(self._env.reader_check())

    def _shared_begin(self, write: bool) -> Any:
        """Hold the gate shared and begin a transaction, adopting a grown map on the way; the
        caller releases the gate after the transaction ends."""
        for attempt in range(3):
            self._gate.acquire_shared()
            try:
                return self._env.begin(write=write, buffers=False)
            except lmdb.MapResizedError:
                self._gate.release_shared()
            except lmdb.ReadersFullError as e:
                self._gate.release_shared()
                raise ReadersFull(f"the volume's reader table is full ({e}); too many "
                                  f"snapshots are open on its processes (nothing was done)"
                                  ) from e
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

    def _full_message(self) -> str:
        return (f"the volume is full (LMDB map of {self.map_size() >> 20} MiB); restart a node "
                f"with a bigger --map-size (the others take it up) or free space")


def reader_slots(table: str, pid: int) -> dict[str, int]:
    """Count the slots of LMDB's reader table as ``Environment.readers()`` prints it (a head
    line, then ``pid thread txnid`` per slot bound to a process, txnid ``-`` when the slot is
    idle): held and reading, in all and for ``pid``."""
    held = reading = held_here = reading_here = 0
    for line in table.splitlines()[1:]:
        parts = line.split()
        if len(parts) != 3 or not parts[0].isdigit():
            continue  # "(no active readers)"
        mine = int(parts[0]) == pid
        busy = parts[2] != "-"
        held += 1
        reading += busy
        held_here += mine
        reading_here += mine and busy
    return {"reader_slots_held": held, "reader_slots_reading": reading,
            "reader_slots_held_here": held_here, "reader_slots_reading_here": reading_here}


class _Snapshot:
    """``kv.Snapshot`` over an LMDB transaction; ``get`` is LMDB's own, for the cost of every
    read."""

    __slots__ = ("_txn", "get")

    def __init__(self, txn: Any) -> None:
        self._txn = txn
        self.get: Callable[[bytes], bytes | None] = txn.get

    def scan(self, lo: bytes, hi: bytes | None = None, *, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        """See ``kv.Snapshot.scan``."""
        if limit is not None and limit <= 0:
            return iter(())
        cur = self._txn.cursor()
        walk = _backward(cur, lo, hi) if reverse else _forward(cur, lo, hi)
        return walk if limit is None else itertools.islice(walk, limit)


class _Writable(_Snapshot):
    """``kv.WriteTxn`` over an LMDB write transaction."""

    __slots__ = ("delete", "put")

    def __init__(self, txn: Any) -> None:
        super().__init__(txn)
        self.put: Callable[[bytes, bytes], None] = txn.put
        self.delete: Callable[[bytes], bool] = txn.delete


def _forward(cur: Any, lo: bytes, hi: bytes | None) -> Iterator[tuple[bytes, bytes]]:
    if not cur.set_range(lo):
        return
    if hi is None:
        yield from cur
        return
    for k, v in cur:
        if k >= hi:
            return
        yield k, v


def _backward(cur: Any, lo: bytes, hi: bytes | None) -> Iterator[tuple[bytes, bytes]]:
    # set_range lands on the first key >= hi; the one before it is the first below hi.
    ok = cur.prev() if hi is not None and cur.set_range(hi) else cur.last()
    while ok:
        k = cur.key()
        if k < lo:
            return
        yield k, cur.value()
        ok = cur.prev()


class _ReadTxn:
    """``LmdbEngine.read``: a class rather than a generator, for the cost of every read."""

    __slots__ = ("_env", "_txn")

    def __init__(self, env: LmdbEngine) -> None:
        self._env = env

    def __enter__(self) -> _Snapshot:
        self._txn = self._env._shared_begin(write=False)
        return _Snapshot(self._txn)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            self._txn.abort()
        finally:
            self._env._gate.release_shared()
        if isinstance(exc, lmdb.Error):
            raise StorageError(f"read failed: {exc}") from exc


class _WriteTxn:
    """``LmdbEngine.write``; see there."""

    __slots__ = ("_env", "_txn")

    def __init__(self, env: LmdbEngine) -> None:
        self._env = env

    def __enter__(self) -> _Writable:
        self._txn = self._env._shared_begin(write=True)
        return _Writable(self._txn)

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
