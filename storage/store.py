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

import os
import struct
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from storage import commitlog, fence, grants, idempotency, keys, rows
from storage.catalog import Schema, Value, check_name
from storage.errors import AlreadyExists, Corrupt, MapFull, NotFound, StorageError
from storage.kv import MIN_KEY_BYTES, Engine, Snapshot, WriteTxn, delete_range
from storage.lmdb_env import DEFAULT_MAP_SIZE, LmdbEngine

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

    def commit_position(self) -> int:
        """Position of the last commit in this snapshot (0 before the first)."""
        return commitlog.last_position(self._txn)

    def log(self, start: int = 1) -> Iterator[commitlog.Record]:
        """Commit-log records from ``start`` on."""
        return commitlog.read(self._txn, start)


class WriteView(ReadView):
    """One engine write transaction; see the module invariant."""

    _txn: WriteTxn

    def __init__(self, txn: WriteTxn, schemas: SchemaCache = _NO_CACHE) -> None:
        super().__init__(txn, schemas)

    def create_table(self, schema: Schema) -> Schema:
        """Store a new table and return its schema with a fresh table id.

        Raises:
            AlreadyExists: a table of that name exists.
        """
        if self._txn.get(keys.catalog(schema.name)) is not None:
            raise AlreadyExists(f"table {schema.name!r} already exists")
        raw = self._txn.get(NEXT_TABLE_ID)
        table_id = 1 if raw is None else _U32.unpack(raw)[0]
        self._txn.put(NEXT_TABLE_ID, _U32.pack(table_id + 1))
        stored = schema.with_id(table_id)
        self._txn.put(keys.catalog(schema.name), stored.encode())
        return stored

    def drop_table(self, schema: Schema) -> int:
        """Remove a table and all its rows; return how many rows went."""
        self._txn.delete(keys.catalog(schema.name))
        prefix = keys.row_prefix(schema.table_id)
        return delete_range(self._txn, prefix, prefix + b"\xff")

    def put(self, schema: Schema, encoded_pk: bytes, version: int, values: list[Value]) -> None:
        """Write a whole row at ``version``.

        Raises:
            InvalidInput: the encoded row is too large.
        """
        self._txn.put(keys.row(schema.table_id, encoded_pk), rows.encode(version, values))

    def put_encoded(self, schema: Schema, encoded_pk: bytes, version: int,
                    encoded_values: bytes) -> None:
        """Write a whole row at ``version`` from its values already encoded
        (``rows.encode_values``)."""
        self._txn.put(keys.row(schema.table_id, encoded_pk),
                      rows.with_version(version, encoded_values))

    def delete(self, schema: Schema, encoded_pk: bytes) -> bool:
        """Remove a row; return whether it existed."""
        return self._txn.delete(keys.row(schema.table_id, encoded_pk))

    def append_log(self, *, ts: float, node: str, changes: list[commitlog.Change]) -> int:
        """Append this commit's record; return its position (the new rows' version)."""
        return commitlog.append(self._txn, ts=ts, node=node, changes=changes)

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
        idempotency.record(self._txn, key, result, ts=ts)

    def purge_idempotency(self, *, now: float) -> int:
        """Delete idempotency records past their retention; return how many went."""
        return idempotency.purge(self._txn, now=now)

    def next_position(self) -> int:
        """The position that the next ``append_log`` in this transaction will return."""
        return commitlog.last_position(self._txn) + 1


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

    def housekeeping(self) -> dict[str, int]:
        """The engine's periodic upkeep (see ``kv.Engine.housekeeping``)."""
        return self.engine.housekeeping()

    def close(self) -> None:
        """Close the engine."""
        self.engine.close()


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

    __slots__ = ("_ctx", "_kind", "_schemas")

    def __init__(self, ctx: Any, kind: type[V], schemas: SchemaCache) -> None:
        self._ctx = ctx
        self._kind = kind
        self._schemas = schemas

    def __enter__(self) -> V:
        return self._kind(self._ctx.__enter__(), self._schemas)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._ctx.__exit__(exc_type, exc, tb)
