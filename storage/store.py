"""The domain store that ``nodes`` uses: snapshots to read, write transactions to commit.

Owns: the catalog (create, drop, look up tables), row get/put/delete/scan by encoded primary key,
and the commit log, fences, grants and idempotency records, all over one ``kv.Engine``; and
:func:`open_volume`, the one way ``nodes`` opens storage. Does not own: what a write means (insert
versus update, conditions, idempotency), which is transaction logic in ``nodes``; any engine's
mechanics (``lmdb_env.py``, ``memory.py``); anything of etcd or gRPC.

Invariant: every ``WriteView`` is one engine write transaction; all its row changes and its
commit-log records commit together and durably, or not at all. Readers see whole commits only.
"""

from __future__ import annotations

import itertools
import os
import shutil
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from storage import commitlog, fence, grants, idempotency, keys, rows, volume
from storage.catalog import Schema, Value, check_name
from storage.errors import AlreadyExists, Corrupt, MapFull, NotFound, StorageError
from storage.kv import MIN_KEY_BYTES, Engine, Snapshot, WriteTxn, delete_range
from storage.lmdb_env import DEFAULT_MAP_SIZE, LmdbEngine
from storage.retention import Cut, Retention, cut

_U32 = struct.Struct(">I")
NEXT_TABLE_ID = keys.meta("next_table_id")


class SchemaCache:
    """Decoded schemas by their stored bytes, so that a hot table's schema is decoded once.

    Keyed by the catalog record itself, not the name: a dropped and re-created table has a new
    record (a new table id), so a cached schema can never be stale. Bounded: cleared when full.
    """

    MAX_ENTRIES = 4096

    def __init__(self) -> None:
        self._by_record: dict[bytes, Schema] = {}

    def decode(self, raw: bytes) -> Schema:
        """The schema stored as ``raw`` (see ``Schema.decode``)."""
        schema = self._by_record.get(raw)
        if schema is None:
            schema = Schema.decode(raw)
            if len(self._by_record) >= self.MAX_ENTRIES:
                self._by_record.clear()
            self._by_record[raw] = schema
        return schema


_NO_CACHE = SchemaCache()


class ReadView:
    """A consistent snapshot of the volume (or the current state inside a write)."""

    def __init__(self, txn: Snapshot, schemas: SchemaCache = _NO_CACHE) -> None:
        self._txn = txn
        self._schemas = schemas

    def table(self, name: str) -> Schema | None:
        """The schema of table ``name``, or None."""
        raw = self._txn.get(keys.catalog(name))
        return None if raw is None else self._schemas.decode(raw)

    def require_table(self, name: str) -> Schema:
        """The schema of table ``name``.

        Raises:
            InvalidInput: the name is empty, too long or unprintable.
            NotFound: no such table.
        """
        check_name("table", name)
        schema = self.table(name)
        if schema is None:
            raise NotFound(f"table {name!r} does not exist")
        return schema

    def tables(self) -> list[Schema]:
        """Every table, by name."""
        lo, hi = keys.kind_range(keys.CATALOG)
        return [self._schemas.decode(v) for _, v in self._txn.scan(lo, hi)]

    def get(self, schema: Schema, encoded_pk: bytes) -> tuple[int, list[Value]] | None:
        """Version and values of one row, or None."""
        raw = self._txn.get(keys.row(schema.table_id, encoded_pk))
        return None if raw is None else rows.decode(raw)

    def get_many(self, schema: Schema, encoded_pks: list[bytes]
                 ) -> list[tuple[int, list[Value]] | None]:
        """Version and values of each row (None where absent), in the order asked."""
        decode = rows.decode
        return [None if raw is None else decode(raw) for raw in self._get_raw(schema, encoded_pks)]

    def get_many_stored(self, schema: Schema, encoded_pks: list[bytes]) -> list[bytes | None]:
        """Each row in its stored form (``rows.py``: ``msgpack([version, [values]])``), None
        where absent, in the order asked: for callers that pass rows on undecoded.

        Raises:
            Corrupt: a stored value is not a row.
        """
        out = self._get_raw(schema, encoded_pks)
        for raw in out:
            if raw is not None and not rows.looks_stored(raw):
                raise Corrupt("unreadable row")
        return out

    def _get_raw(self, schema: Schema, encoded_pks: list[bytes]) -> list[bytes | None]:
        get = self._txn.get
        prefix = keys.row_prefix(schema.table_id)
        return [get(prefix + enc) for enc in encoded_pks]

    def scan_stored(self, schema: Schema, lo: bytes | None, hi: bytes | None,
                    reverse: bool = False) -> Iterator[bytes]:
        """Like :meth:`scan`, each row in its stored form (see :meth:`get_many_stored`).

        Raises:
            Corrupt: a stored value is not a row.
        """
        for _, v in self._range(schema, lo, hi, reverse):
            if not rows.looks_stored(v):
                raise Corrupt("unreadable row")
            yield v

    def scan(self, schema: Schema, lo: bytes | None, hi: bytes | None,
             reverse: bool = False) -> Iterator[tuple[int, list[Value]]]:
        """Rows with ``lo <= encoded pk < hi`` (None: unbounded) in key order or reverse."""
        for _, version, values in self.scan_keyed(schema, lo, hi, reverse):
            yield version, values

    def scan_keyed(self, schema: Schema, lo: bytes | None, hi: bytes | None,
                   reverse: bool = False) -> Iterator[tuple[bytes, int, list[Value]]]:
        """Like :meth:`scan`, with each row's encoded primary key first."""
        n = len(keys.row_prefix(schema.table_id))
        for k, v in self._range(schema, lo, hi, reverse):
            yield k[n:], *rows.decode(v)

    def _range(self, schema: Schema, lo: bytes | None, hi: bytes | None, reverse: bool
               ) -> Iterator[tuple[bytes, bytes]]:
        """(stored key, stored row) of each row with ``lo <= encoded pk < hi``, in order."""
        prefix = keys.row_prefix(schema.table_id)
        end = prefix + hi if hi is not None else prefix + b"\xff"
        return self._txn.scan(prefix + (lo or b""), end, reverse=reverse)

    def idempotent_result(self, key: str) -> Any | None:
        """The result stored with idempotency key ``key``, or None."""
        return idempotency.lookup(self._txn, key)

    def grants(self, resource: str) -> list[tuple[str, int, bytes]]:
        """The published grants on a lock resource: (tag, lease id, value) each
        (``grants.py``)."""
        return grants.on(self._txn, resource)

    def has_grants_under(self, prefix: str) -> bool:
        """Whether any published grant's resource name starts with ``prefix``."""
        return grants.any_under(self._txn, prefix)

    def is_fenced(self, lease_id: int) -> bool:
        """Whether the session ``lease_id`` is fenced."""
        return fence.is_fenced(self._txn, lease_id)

    def count(self, schema: Schema) -> int:
        """Number of rows in a table (walks the keys)."""
        prefix = keys.row_prefix(schema.table_id)
        return sum(1 for _ in self._txn.scan(prefix, prefix + b"\xff"))

    def volume_identity(self) -> volume.Identity | None:
        """This copy's identity (``volume.py``), or None if it has none yet.

        Raises:
            Corrupt: the record does not decode.
        """
        return volume.read(self._txn)

    def commit_position(self) -> int:
        """Position of the last commit in this snapshot (0 before the first)."""
        return commitlog.last_position(self._txn)

    def log(self, start: int | None = None) -> Iterator[commitlog.Record]:
        """Commit-log records from ``start`` on (None: from the oldest held).

        Raises:
            LogTruncated: ``start`` is before the oldest position held.
        """
        return commitlog.read(self._txn, start)

    def log_stored(self, start: int | None, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` commit-log records from ``start`` on, as (position, stored bytes)
        (``commitlog.header`` reads their time and node cheaply).

        Raises:
            LogTruncated: ``start`` is before the oldest position held.
        """
        return commitlog.read_stored(self._txn, start, limit)

    def log_bounds(self) -> tuple[int, int, int]:
        """The commit log held: oldest position, last position, size in bytes (the oldest is
        ``last + 1`` when no record is held)."""
        return (commitlog.oldest_position(self._txn), commitlog.last_position(self._txn),
                commitlog.held_bytes(self._txn))

    def replicated_items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every key and value of the replicated key space (``keys.is_replicated``), in key
        order: with :meth:`commit_position`, a consistent copy of the volume."""
        for kind in sorted(keys.REPLICATED_KINDS):
            for k, v in self._txn.scan(*keys.kind_range(kind)):
                if k not in keys.LOG_META:
                    yield k, v

    def _finish(self) -> None:
        """Called before the transaction commits (nothing to do for a read)."""


class WriteView(ReadView):
    """One engine write transaction; see the module invariant.

    Every change to the replicated key space is noted as a replay op (``commitlog.py``) and goes
    into the next commit-log record this transaction appends; changes that no record took up
    (an idempotency record of a request that changed nothing, a purge) get a record of their own
    just before the transaction commits, so that replaying the log reproduces the volume.
    """

    _txn: WriteTxn

    def __init__(self, txn: WriteTxn, schemas: SchemaCache = _NO_CACHE) -> None:
        super().__init__(txn, schemas)
        self._ops: list[commitlog.Op] = []
        self._log_bytes = 0
        self._recorder = _Recorder(txn, self._ops)

    def create_table(self, schema: Schema) -> Schema:
        """Store a new table and return its schema with a fresh table id.

        Raises:
            AlreadyExists: a table of that name exists.
        """
        txn = self._recorder
        if txn.get(keys.catalog(schema.name)) is not None:
            raise AlreadyExists(f"table {schema.name!r} already exists")
        raw = txn.get(NEXT_TABLE_ID)
        table_id = 1 if raw is None else _U32.unpack(raw)[0]
        txn.put(NEXT_TABLE_ID, _U32.pack(table_id + 1))
        stored = schema.with_id(table_id)
        txn.put(keys.catalog(schema.name), stored.encode())
        return stored

    def drop_table(self, schema: Schema) -> int:
        """Remove a table and all its rows; return how many rows went."""
        self._recorder.delete(keys.catalog(schema.name))
        prefix = keys.row_prefix(schema.table_id)
        self._ops.append((commitlog.DELETE_RANGE, prefix, prefix + b"\xff"))
        return delete_range(self._txn, prefix, prefix + b"\xff")

    def put(self, schema: Schema, encoded_pk: bytes, version: int, values: list[Value]) -> None:
        """Write a whole row at ``version``.

        Raises:
            InvalidInput: the encoded row is too large.
        """
        key, value = keys.row(schema.table_id, encoded_pk), rows.encode(version, values)
        self._txn.put(key, value)
        self._ops.append((commitlog.PUT, key, value))

    def put_encoded(self, schema: Schema, encoded_pk: bytes, version: int,
                    encoded_values: bytes) -> None:
        """Write a whole row at ``version`` from its values already encoded
        (``rows.encode_values``)."""
        key = keys.row(schema.table_id, encoded_pk)
        value = rows.with_version(version, encoded_values)
        self._txn.put(key, value)
        self._ops.append((commitlog.PUT, key, value))

    def delete(self, schema: Schema, encoded_pk: bytes) -> bool:
        """Remove a row; return whether it existed."""
        return self._recorder.delete(keys.row(schema.table_id, encoded_pk))

    def append_log(self, *, ts: float, node: str, changes: list[commitlog.Change]) -> int:
        """Append this commit's record, with the replay ops noted since the last one; return
        its position (the new rows' version)."""
        pos, size = commitlog.append(self._txn, ts=ts, node=node, changes=changes,
                                     ops=self._ops)
        self._ops.clear()
        self._log_bytes += size
        return pos

    def check_not_fenced(self, lease_id: int) -> None:
        """Refuse to commit for a fenced session (see ``fence.py``).

        Raises:
            Fenced: the session is fenced.
        """
        fence.check(self._txn, lease_id)

    def fence(self, lease_id: int, *, ts: float, by: str) -> bool:
        """Fence the session ``lease_id`` and remove its published grants; return whether the
        fence record is new."""
        grants.withdraw_session(self._txn, lease_id)
        return fence.fence(self._txn, lease_id, ts=ts, by=by)

    def publish_grants(self, lease_id: int, items: list[tuple[str, str, bytes]]) -> None:
        """Publish granted locks ``(resource, tag, value)`` of session ``lease_id``."""
        grants.publish(self._txn, lease_id, items)

    def withdraw_grants(self, items: list[tuple[str, str]]) -> None:
        """Remove published grants ``(resource, tag)``."""
        grants.withdraw(self._txn, items)

    def record_idempotent(self, key: str, result: Any, *, ts: float) -> None:
        """Store ``result`` under idempotency key ``key`` (same transaction as the write)."""
        idempotency.record(self._recorder, key, result, ts=ts)

    def purge_idempotency(self, *, now: float) -> int:
        """Delete idempotency records past their retention; return how many went."""
        return idempotency.purge(self._recorder, now=now)

    def next_position(self) -> int:
        """The position that the next ``append_log`` in this transaction will return."""
        return commitlog.last_position(self._txn) + 1

    def truncate_log(self, before: int) -> tuple[int, int]:
        """Remove the commit-log records before position ``before``; return how many went and
        their size in bytes (``retention.py`` decides ``before``)."""
        return commitlog.truncate(self._txn, before)

    def load_copy(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Store items of another volume's :meth:`ReadView.replicated_items` as they are (a
        copy, not a commit: nothing is logged); return how many.

        Raises:
            Corrupt: an item is outside the replicated key space.
        """
        n = 0
        for k, v in items:
            if not keys.is_replicated(k):
                raise Corrupt(f"a copied item is outside the replicated key space: {k[:16]!r}")
            self._txn.put(k, v)
            n += 1
        return n

    def keep_replicated_only(self, position: int) -> int:
        """Make a whole copy of another volume (an LMDB copy, taken at ``position``) this
        volume's own: remove what is not replicated (its commit log and the log's meta values,
        fence records, published grants, its identity: ``keys.py``) and make the log empty,
        its next record ``position + 1``; return how many keys went. Nothing is logged; give
        the volume an identity of its own after (:meth:`set_volume_identity`).

        Raises:
            Corrupt: the copy's own position is not ``position``.
        """
        held = commitlog.last_position(self._txn)
        if held != position:
            raise Corrupt(f"the copy is at position {held}, not {position}")
        gone = 0
        for kind in (keys.LOG, keys.FENCE, keys.GRANT, keys.LOCAL):
            gone += delete_range(self._txn, *keys.kind_range(kind))
        for k in keys.LOG_META:
            gone += bool(self._txn.delete(k))
        commitlog.restart_at(self._txn, position)
        return gone

    def set_volume_identity(self, identity: volume.Identity) -> None:
        """Store this copy's identity (outside the replicated key space: nothing is logged)."""
        volume.write(self._txn, identity)

    def restart_log_at(self, position: int) -> None:
        """Make the log of a volume copied at ``position`` empty, its next record
        ``position + 1``."""
        commitlog.restart_at(self._txn, position)

    def apply_record(self, record: commitlog.Record) -> None:
        """Replay a record of another volume's log here, and keep it at the same position.

        Raises:
            Corrupt: it carries no replay ops (an older format) or a malformed op.
            StorageError: it is not the next position of this log.
        """
        if record.ops is None:
            raise Corrupt(f"commit-log record {record.position} has no replay ops")
        expected = self.next_position()
        if record.position != expected:
            raise StorageError(f"record {record.position} does not follow this log (next is "
                               f"{expected})")
        commitlog.apply_ops(self._txn, record.ops)
        _, size = commitlog.append(self._txn, ts=record.ts, node=record.node,
                                   changes=record.changes, ops=record.ops)
        self._log_bytes += size

    def apply_stored(self, position: int, raw: bytes) -> commitlog.Record:
        """Like :meth:`apply_record`, from the record's stored bytes (kept as they are);
        return the record.

        Raises:
            Corrupt: it is unreadable or carries no replay ops.
            StorageError: it is not the next position of this log.
        """
        record = commitlog.decode(keys.log(position), raw)
        if record.ops is None:
            raise Corrupt(f"commit-log record {position} has no replay ops")
        expected = self.next_position()
        if position != expected:
            raise StorageError(f"record {position} does not follow this log (next is "
                               f"{expected})")
        commitlog.apply_ops(self._txn, record.ops)
        self._log_bytes += commitlog.put_stored(self._txn, position, raw)
        return record

    def _finish(self) -> None:
        """Log the changes that no record took up, and the log's new size."""
        if self._ops:
            self.append_log(ts=time.time(), node="", changes=[])
        if self._log_bytes:
            commitlog.add_bytes(self._txn, self._log_bytes)
            self._log_bytes = 0


class _Recorder:
    """A ``kv.WriteTxn`` over a write transaction that notes each change as a replay op (for
    the domain modules that write through the protocol: idempotency, the catalog)."""

    __slots__ = ("_ops", "_txn", "get", "scan")

    def __init__(self, txn: WriteTxn, ops: list[commitlog.Op]) -> None:
        self._txn = txn
        self._ops = ops
        self.get = txn.get
        self.scan = txn.scan

    def put(self, key: bytes, value: bytes) -> None:
        self._txn.put(key, value)
        self._ops.append((commitlog.PUT, key, value))

    def delete(self, key: bytes) -> bool:
        existed = self._txn.delete(key)
        if existed:
            self._ops.append((commitlog.DELETE, key))
        return existed


class Store:
    """The volume's domain store over one engine (opened once per process)."""

    def __init__(self, engine: Engine, *, path: str = "") -> None:
        if engine.max_key_bytes < MIN_KEY_BYTES:
            raise StorageError(f"the engine takes keys of {engine.max_key_bytes} bytes at most; "
                               f"the key space needs {MIN_KEY_BYTES}")
        self.engine = engine
        self.path = path
        self._schemas = SchemaCache()

    def read(self) -> _Opened[ReadView]:
        """A snapshot (a context manager giving a ``ReadView``): sees every commit made before
        it was taken, and nothing after."""
        return _Opened(self.engine.read(), ReadView, self._schemas)

    def write(self) -> _Opened[WriteView]:
        """A write transaction (a context manager giving a ``WriteView``); durable when the
        ``with`` block exits normally.

        Raises:
            MapFull: the volume is full; nothing was written.
        """
        return _Opened(self.engine.write(), WriteView, self._schemas)

    def transact(self, work: Callable[[WriteView], T]) -> T:
        """Run ``work`` in one write transaction and commit it; return what it returned.

        When the volume is full and the engine can make room (LMDB: another process set a
        bigger map), ``work`` runs once more, in a new transaction: it must expect to be run
        again from the start (what it read before is gone with the failed transaction).

        Raises:
            MapFull: the volume is full; nothing was written.
            Exception: whatever ``work`` raised; nothing was written.
        """
        try:
            with self.write() as view:
                return work(view)
        except MapFull:
            if not self.engine.make_room():
                raise
        with self.write() as view:
            return work(view)

    def trim_log(self, policy: Retention, *, now: float, needed_from: int | None,
                 limit: int = 5000) -> Cut:
        """Remove the oldest commit-log records that ``policy`` lets go (at most ``limit``):
        decided in a snapshot, removed in a short write transaction (the records before a
        position never change, so the decision stays true)."""
        with self.read() as view:
            records = ((r.position, r.ts, r.size)
                       for r in itertools.islice(view.log(), limit))
            decision = cut(records, held_bytes=view.log_bounds()[2], now=now,
                           needed_from=needed_from, policy=policy)
        if decision.records:
            self.transact(lambda view: view.truncate_log(decision.before))
        return decision

    def version(self) -> int:
        """A number that changes whenever anything commits (see ``kv.Engine.version``)."""
        return self.engine.version()

    def housekeeping(self) -> dict[str, int]:
        """The engine's periodic upkeep (see ``kv.Engine.housekeeping``)."""
        return self.engine.housekeeping()

    def info(self) -> dict[str, int]:
        """Figures about the engine, by name (see ``kv.Engine.info``; LMDB's in
        ``LmdbEngine.info``): what a node's metrics report of its volume."""
        return self.engine.info()

    def copy_to(self, path: str, on_attempt: Callable[[], None] | None = None) -> int:
        """Write a consistent copy of the whole volume (every kind of key, free pages too) to
        the new file ``path`` at the engine's speed, fsynced; return the copy's position. One
        snapshot, so commits go on meanwhile; the position is read from the copy itself, so it
        is exactly the state the copy holds. Open the copy with :func:`open_copy`.
        ``on_attempt``: called as each attempt of the copy begins, ``path`` empty (see
        ``LmdbEngine.copy_to``).

        Raises:
            StorageError: the engine makes no such copies (only LMDB does), or it failed
                (nothing is left at ``path``).
        """
        copy_to = getattr(self.engine, "copy_to", None)
        if copy_to is None:
            raise StorageError(f"{type(self.engine).__name__} makes no file copies")
        copy_to(path, on_attempt)
        copy = open_copy(path)
        try:
            with copy.read() as view:
                return view.commit_position()
        finally:
            copy.close()

    def close(self) -> None:
        """Close the engine."""
        self.engine.close()


def open_copy(path: str) -> Store:
    """Open a volume's copy made by :meth:`Store.copy_to` (the file ``path``) to read it, with
    no lock file (nothing is written beside it).

    Raises:
        StorageError: it cannot be opened (not an LMDB data file).
    """
    return Store(LmdbEngine(path, copy_file=True), path=path)


def open_volume_from_copy(copy_path: str, volume: str, *,
                          map_size: int = DEFAULT_MAP_SIZE) -> Store:
    """Put a copy made by :meth:`Store.copy_to` in place as the data file of a new volume in
    directory ``volume`` (it must hold none), fsynced, and open it (:func:`open_volume`). The
    volume is still the copied one's (its log, fences, identity): call
    :meth:`WriteView.keep_replicated_only` before anything else.

    Raises:
        StorageError: ``volume`` holds a data file already, or it cannot be opened.
    """
    path = os.path.join(volume, "lmdb")
    os.makedirs(path, exist_ok=True)
    data = os.path.join(path, "data.mdb")
    if os.path.exists(data):
        raise StorageError(f"{volume} holds a volume already")
    try:
        shutil.copyfile(copy_path, data)  # in the kernel (sendfile) where it can
        fd = os.open(data, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise StorageError(f"cannot put {copy_path} in place in {volume}: {e}") from e
    return open_volume(volume, map_size=map_size)


def open_volume(volume: str, *, map_size: int = DEFAULT_MAP_SIZE) -> Store:
    """Open the shared volume in directory ``volume`` (its LMDB environment lives in
    ``volume/lmdb``, created if missing), once per process.

    Raises:
        StorageError: it cannot be opened.
    """
    path = os.path.join(volume, "lmdb")
    return Store(LmdbEngine(path, map_size=map_size), path=path)


V = TypeVar("V", bound=ReadView)
T = TypeVar("T")


class _Opened(Generic[V]):
    """``Store.read`` and ``Store.write``: a view over an engine transaction for a ``with``
    block (a class rather than a generator, for the cost of every call)."""

    __slots__ = ("_ctx", "_kind", "_schemas", "_view")

    def __init__(self, ctx: Any, kind: type[V], schemas: SchemaCache) -> None:
        self._ctx = ctx
        self._kind = kind
        self._schemas = schemas

    def __enter__(self) -> V:
        view = self._kind(self._ctx.__enter__(), self._schemas)
        self._view = view
        return view

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            try:
                self._view._finish()
            except BaseException as e:
                self._ctx.__exit__(type(e), e, e.__traceback__)
                raise
        self._ctx.__exit__(exc_type, exc, tb)
