"""Thin gRPC servicers: request message -> domain call -> response message, nothing else.

Each method is guarded by ``nodes.status`` (errors -> status codes). Reads run on a storage
snapshot taken when the call starts; writes go through the node's group committer.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
import msgpack

from nodes import commit, convert, query
from nodes.limits import ResourceExhausted, client_of
from nodes.status import replication_stream, stream, unary
from nodes.txn import WrongNode
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from shardless.v1 import types_pb2 as pb
from storage import InvalidInput, Schema, Value, commitlog, idempotency

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from nodes.node import Node

MAX_KEYS_PER_CALL = 100_000
SCAN_CHUNK_ROWS = 512
SCAN_CHUNK_BYTES = 1 << 20
LOG_BATCH = 256
MAX_LOG_BATCH = 10_000
FOLLOW_WAIT_S = 0.05  # the longest a follower at the end of the log waits between looks
FOLLOW_HEARTBEAT_S = 1.0
COPY_CHUNK_BYTES = 1 << 20

_KINDS = {pb.Mutation.INSERT: commit.INSERT, pb.Mutation.UPSERT: commit.UPSERT,
          pb.Mutation.UPDATE: commit.UPDATE, pb.Mutation.DELETE: commit.DELETE}
_OPS = {pb.Filter.EQ: query.EQ, pb.Filter.NE: query.NE, pb.Filter.LT: query.LT,
        pb.Filter.LE: query.LE, pb.Filter.GT: query.GT, pb.Filter.GE: query.GE,
        pb.Filter.IS_NULL: query.IS_NULL, pb.Filter.IS_NOT_NULL: query.IS_NOT_NULL}


def _timeout(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    # With no deadline, gRPC reports an enormous number that timeouts cannot take.
    return None if remaining is None or remaining > 1e6 else max(remaining, 0.0)


def _result(found: commit.ReadResult, out: api.GetResponse | None = None) -> api.GetResponse:
    """``out`` (a new GetResponse if None) filled with one read's result, in place."""
    if out is None:
        out = api.GetResponse()
    if found is not None:
        out.found = True
        convert.fill_row(out.row, found[1], found[0])
    return out


def _results(found: list[commit.ReadResult], out: Any) -> None:
    """Append each read's result to the repeated GetResponse field ``out``."""
    for f in found:
        _result(f, out.add())


def _mutation(m: pb.Mutation, table: str = "") -> commit.Write:
    kind = _KINDS.get(m.kind)
    if kind is None:
        raise InvalidInput("mutation has no kind (INSERT, UPSERT, UPDATE or DELETE)")
    ev = m.expected_version if m.HasField("expected_version") else None
    return commit.Write(m.table or table, kind, convert.row(m.row), ev)


class _Base:
    def __init__(self, node: Node) -> None:
        self.node = node

    def _at_least(self, position: int, context: grpc.ServicerContext) -> None:
        """Wait (within the call's deadline) until the volume holds ``position``.

        Raises:
            PositionNotReached: it did not.
        """
        if position:
            left = _timeout(context)
            # Give up a little before the caller does, so that it hears why.
            self.node.wait_for_position(position, None if left is None
                                        else max(0.0, left * 0.9 - 0.02))

    def _commit(self, work: commit.Work, context: grpc.ServicerContext) -> commit.Outcome:
        return self.node.committer.submit(work, timeout_s=_timeout(context),
                                          is_active=context.is_active)

    def _write(self, writes: list[commit.Write], context: grpc.ServicerContext,
               txn_id: str = "", idempotency_key: str = "", fingerprint: str = ""
               ) -> api.WriteResponse:
        if not writes:
            raise InvalidInput("no rows given")
        if len(writes) > MAX_KEYS_PER_CALL:
            raise InvalidInput(f"{len(writes)} rows in one call; the limit is "
                               f"{MAX_KEYS_PER_CALL}")
        if txn_id:
            if idempotency_key:
                raise InvalidInput("inside a transaction, give the idempotency key to Commit")
            with self.node.txns.use(txn_id) as txn:
                n = self.node.txns.write(txn, writes, _timeout(context))
            return api.WriteResponse(rows_affected=n)
        _check_idempotency_key(idempotency_key)
        out = self.node.txns.one_shot(
            commit.Transaction(writes, idempotency_key=idempotency_key,
                               fingerprint=fingerprint if idempotency_key else ""),
            _timeout(context), context.is_active)
        return api.WriteResponse(commit_position=out.commit_position,
                                 rows_affected=out.rows_affected, replayed=out.replayed)

    def _reads(self, reads: list[commit.Read], txn_id: str, for_update: bool,
               context: grpc.ServicerContext) -> list[commit.ReadResult]:
        if txn_id:
            with self.node.txns.use(txn_id) as txn:
                return self.node.txns.read(txn, reads, for_update, _timeout(context))
        if for_update:
            raise InvalidInput("for_update needs a transaction_id")
        with self.node.reads.read() as view:
            return commit.evaluate(view, [], reads)


class TableService(_Base, rpc.TableServiceServicer):
    """Create, drop, list and describe tables."""

    @unary
    def CreateTable(self, request: api.CreateTableRequest, context: grpc.ServicerContext
                    ) -> api.CreateTableResponse:
        schema = convert.schema(request.schema)
        out = self._commit(commit.CreateTable(schema, request.if_not_exists), context)
        return api.CreateTableResponse(schema=convert.to_schema(out.value),
                                       commit_position=out.commit_position)

    @unary
    def DropTable(self, request: api.DropTableRequest, context: grpc.ServicerContext
                  ) -> api.DropTableResponse:
        out = self.node.txns.drop_table(request.name, request.if_exists, _timeout(context),
                                        context.is_active)
        return api.DropTableResponse(dropped=bool(out.value),
                                     commit_position=out.commit_position)

    @unary
    def ListTables(self, request: api.ListTablesRequest, context: grpc.ServicerContext
                   ) -> api.ListTablesResponse:
        with self.node.reads.read() as view:
            return api.ListTablesResponse(tables=[convert.to_schema(s) for s in view.tables()])

    @unary
    def DescribeTable(self, request: api.DescribeTableRequest, context: grpc.ServicerContext
                      ) -> api.DescribeTableResponse:
        with self.node.reads.read() as view:
            schema = view.require_table(request.name)
            return api.DescribeTableResponse(schema=convert.to_schema(schema),
                                             row_count=view.count(schema))


class RowService(_Base, rpc.RowServiceServicer):
    """Point reads, batched reads, writes and range scans."""

    @unary
    def Get(self, request: api.GetRequest, context: grpc.ServicerContext) -> api.GetResponse:
        self._at_least(request.min_position, context)
        if request.HasField("begin"):
            return self._begun_here(request, context, self.Get)
        if not request.transaction_id and not request.for_update:
            out = api.GetResponse()
            self._snapshot_reads(request.table, [request.key], list(request.columns), [out])
            return out
        read = commit.Read(request.table, convert.key(request.key), list(request.columns))
        return _result(self._reads([read], request.transaction_id, request.for_update,
                                   context)[0])

    def _begun_here(self, request: Any, context: grpc.ServicerContext,
                    call: Callable[[Any, grpc.ServicerContext], Any]) -> Any:
        """A read with an inline begin: open the transaction, run ``call`` (the unguarded
        method) in it, and answer the transaction in ``begun``; roll it back if the read
        fails, since the client never learns of it then."""
        if request.transaction_id:
            raise InvalidInput("give either transaction_id or begin, not both")
        txn = self.node.txns.begin(request.begin.read_only, client_of(context.peer()),
                                   request.begin.lifetime_ms / 1000)
        inner = type(request)()
        inner.CopyFrom(request)
        inner.ClearField("begin")
        inner.transaction_id = txn.txn_id
        try:
            out = call.__wrapped__(self, inner, context)  # type: ignore[attr-defined]
        except BaseException:
            with contextlib.suppress(Exception), self.node.txns.use(txn.txn_id) as t:
                self.node.txns.rollback(t)
            raise
        out.begun.CopyFrom(_begun(self.node, txn.txn_id))
        return out

    @unary
    def BatchGet(self, request: api.BatchGetRequest, context: grpc.ServicerContext
                 ) -> api.BatchGetResponse:
        if len(request.keys) > MAX_KEYS_PER_CALL:
            raise InvalidInput(f"{len(request.keys)} keys in one call; the limit is "
                               f"{MAX_KEYS_PER_CALL}")
        self._at_least(request.min_position, context)
        if request.HasField("begin"):
            return self._begun_here(request, context, self.BatchGet)
        cols = list(request.columns)
        out = api.BatchGetResponse()
        if not request.transaction_id and not request.for_update:
            if request.packed:
                self._snapshot_packed(request.table, request.keys, cols, out.packed)
                return out
            results = [out.results.add() for _ in request.keys]
            self._snapshot_reads(request.table, request.keys, cols, results)
            return out
        reads = [commit.Read(request.table, convert.key(k), cols) for k in request.keys]
        found = self._reads(reads, request.transaction_id, request.for_update, context)
        if request.packed:
            names = self._column_names(request.table, cols)
            out.packed.columns.extend(names)
            out.packed.rows = convert.packed_array([
                convert.PACKED_NIL if f is None else
                convert.packed_row(f[0], [f[1][n] for n in names]) for f in found])
            return out
        _results(found, out.results)
        return out

    def _column_names(self, table: str, columns: list[str]) -> list[str]:
        """The names a projection of ``table`` returns (checked; all when empty)."""
        with self.node.reads.read() as view:
            return view.require_table(table).projection(columns)[0]

    def _snapshot_packed(self, table: str, keys: Any, columns: list[str],
                         out: pb.PackedRows) -> None:
        """Like :meth:`_snapshot_reads`, into packed rows: without a projection the stored
        rows go out as they are (their layout is the packed one)."""
        with self.node.reads.read() as view:
            schema = view.require_table(table)
            names, indexes = schema.projection(columns)
            encs = convert.encoded_keys(schema, keys)
            nil = convert.PACKED_NIL
            if indexes is None:
                parts = [nil if r is None else r for r in view.get_many_stored(schema, encs)]
            else:
                parts = [nil if f is None else convert.packed_row(f[0], [f[1][i] for i in indexes])
                         for f in view.get_many(schema, encs)]
        out.columns.extend(names)
        out.rows = convert.packed_array(parts)

    def _snapshot_reads(self, table: str, keys: Any, columns: list[str],
                        results: list[api.GetResponse]) -> None:
        """Point reads outside a transaction, on one snapshot, into ``results`` (the hot path
        of Get and BatchGet: schema and projection resolved once, rows filled in place)."""
        with self.node.reads.read() as view:
            schema = view.require_table(table)
            names, indexes = schema.projection(columns)
            encs = convert.encoded_keys(schema, keys)
            for out, found in zip(results, view.get_many(schema, encs), strict=True):
                if found is not None:
                    out.found = True
                    convert.fill_row_values(out.row, names, found[1], indexes, found[0])

    def _rows(self, request: api.WriteRowsRequest, kind: str, context: grpc.ServicerContext
              ) -> api.WriteResponse:
        if request.HasField("packed"):
            if request.rows:
                raise InvalidInput("give either rows or packed, not both")
            cols, rows = convert.unpacked_rows(request.packed)
            writes = [commit.Write(request.table, kind, {}, packed=(cols, r)) for r in rows]
        else:
            writes = [commit.Write(request.table, kind, convert.row(r)) for r in request.rows]
        return self._write(writes, context, request.transaction_id, request.idempotency_key,
                           _fingerprint_if_keyed(kind, request))

    @unary
    def Insert(self, request: api.WriteRowsRequest, context: grpc.ServicerContext
               ) -> api.WriteResponse:
        return self._rows(request, commit.INSERT, context)

    @unary
    def Upsert(self, request: api.WriteRowsRequest, context: grpc.ServicerContext
               ) -> api.WriteResponse:
        return self._rows(request, commit.UPSERT, context)

    @unary
    def Update(self, request: api.WriteRowsRequest, context: grpc.ServicerContext
               ) -> api.WriteResponse:
        return self._rows(request, commit.UPDATE, context)

    @unary
    def Delete(self, request: api.DeleteRequest, context: grpc.ServicerContext
               ) -> api.WriteResponse:
        return self._write([commit.Write(request.table, commit.DELETE, {}, key=convert.key(k))
                            for k in request.keys], context, request.transaction_id,
                           request.idempotency_key,
                           _fingerprint_if_keyed("Delete", request))

    @unary
    def Write(self, request: api.WriteRequest, context: grpc.ServicerContext
              ) -> api.WriteResponse:
        return self._write([_mutation(m) for m in request.mutations], context,
                           request.transaction_id, request.idempotency_key,
                           _fingerprint_if_keyed("Write", request))

    @stream
    def Scan(self, request: api.ScanRequest, context: grpc.ServicerContext
             ) -> Iterator[api.ScanResponse]:
        self._at_least(request.min_position, context)
        filters = []
        for f in request.filters:
            op = _OPS.get(f.op)
            if op is None:
                raise InvalidInput(f"filter on {f.column!r} has no valid op")
            filters.append(query.Filter(f.column, op, convert.value(f.value)))
        cols = list(request.columns)
        start = convert.key(request.start.key) if request.HasField("start") else None
        end = convert.key(request.end.key) if request.HasField("end") else None
        bounds = (start, request.start.exclusive, end, request.end.exclusive)
        limit = request.limit or None
        chunks = _packed_chunks if request.packed else _chunks
        if request.transaction_id:
            with self.node.txns.use(request.transaction_id) as txn:
                schema, rows, close = self.node.txns.scan(
                    txn, request.table, bounds, request.reverse, request.for_update,
                    _timeout(context))
                try:
                    yield from chunks(schema, rows, filters, cols, limit)
                finally:
                    close()
            return
        if request.for_update:
            raise InvalidInput("for_update needs a transaction_id")
        with self.node.reads.read() as view:
            schema = view.require_table(request.table)
            lo, hi = query.byte_range(schema, *bounds)
            if request.packed and not filters and not cols:
                yield from _stored_chunks(schema, view.scan_stored(schema, lo, hi,
                                                                   request.reverse), limit)
                return
            yield from chunks(schema, view.scan(schema, lo, hi, request.reverse), filters,
                              cols, limit)


def _log_record(position: int, raw: bytes) -> api.LogRecord:
    ts, node = commitlog.header(raw)
    return api.LogRecord(position=position, ts=ts, node_id=node, data=raw)


def _chunks(schema: Schema, rows: Iterator[tuple[int, list[Value]]],
            filters: list[query.Filter], cols: list[str], limit: int | None
            ) -> Iterator[api.ScanResponse]:
    """Filter, project and pack rows into stream messages of many rows each."""
    names, indexes = schema.projection(cols)
    keep = query.compile_filters(schema, filters)
    chunk = api.ScanResponse()
    size = sent = 0
    fill = convert.fill_row_values
    for version, values in rows:
        if not keep(values):
            continue
        r = fill(chunk.rows.add(), names, values, indexes, version)
        size += r.ByteSize()
        sent += 1
        if len(chunk.rows) >= SCAN_CHUNK_ROWS or size >= SCAN_CHUNK_BYTES:
            yield chunk
            chunk, size = api.ScanResponse(), 0
        if limit is not None and sent >= limit:
            break
    if chunk.rows:
        yield chunk


def _packed_messages(names: list[str], parts: Iterator[bytes], limit: int | None
                     ) -> Iterator[api.ScanResponse]:
    """Scan messages of packed rows (``PackedRows``; ``parts``: each row packed), cut as
    :func:`_chunks` cuts them, up to ``limit`` rows."""
    chunk: list[bytes] = []
    size = 0
    for sent, part in enumerate(parts, 1):
        chunk.append(part)
        size += len(part)
        if len(chunk) >= SCAN_CHUNK_ROWS or size >= SCAN_CHUNK_BYTES:
            yield api.ScanResponse(packed=pb.PackedRows(columns=names,
                                                        rows=convert.packed_array(chunk)))
            chunk, size = [], 0
        if limit is not None and sent >= limit:
            break
    if chunk:
        yield api.ScanResponse(packed=pb.PackedRows(columns=names,
                                                    rows=convert.packed_array(chunk)))


def _packed_chunks(schema: Schema, rows: Iterator[tuple[int, list[Value]]],
                   filters: list[query.Filter], cols: list[str], limit: int | None
                   ) -> Iterator[api.ScanResponse]:
    """Like :func:`_chunks`, each message's rows packed (``PackedRows``)."""
    names, indexes = schema.projection(cols)
    keep = query.compile_filters(schema, filters)
    pack = convert.packed_row
    parts = (pack(version, values if indexes is None else [values[i] for i in indexes])
             for version, values in rows if keep(values))
    return _packed_messages(names, parts, limit)


def _stored_chunks(schema: Schema, stored: Iterator[bytes], limit: int | None
                   ) -> Iterator[api.ScanResponse]:
    """Packed scan messages of whole stored rows, passed on undecoded (no filter, no
    projection: the stored layout is the packed one)."""
    return _packed_messages([c.name for c in schema.columns], stored, limit)


class TransactionService(_Base, rpc.TransactionServiceServicer):
    """One-shot transactions."""

    @unary
    def Execute(self, request: api.ExecuteRequest, context: grpc.ServicerContext
                ) -> api.ExecuteResponse:
        checks = [_check(c) for c in request.conditions]
        reads = [commit.Read(r.table, convert.key(r.key), list(r.columns)) for r in request.reads]
        writes = [_mutation(m) for m in request.writes]
        _check_idempotency_key(request.idempotency_key)
        self._at_least(request.min_position, context)
        if not writes:
            with self.node.reads.read() as view:
                found = commit.evaluate(view, checks, reads)
            resp = api.ExecuteResponse()
            _results(found, resp.reads)
            return resp
        key = request.idempotency_key
        out = self.node.txns.one_shot(
            commit.Transaction(writes, checks, reads, idempotency_key=key,
                               fingerprint=request_fingerprint("Execute", request)
                               if key else ""),
            _timeout(context), context.is_active)
        resp = api.ExecuteResponse(commit_position=out.commit_position,
                                   rows_affected=out.rows_affected, replayed=out.replayed)
        _results(out.reads, resp.reads)
        return resp

    @unary
    def Begin(self, request: api.BeginRequest, context: grpc.ServicerContext
              ) -> api.BeginResponse:
        self._at_least(request.min_position, context)
        txn = self.node.txns.begin(request.read_only, client_of(context.peer()),
                                   request.lifetime_ms / 1000)
        return _begun(self.node, txn.txn_id)

    @unary
    def Commit(self, request: api.CommitRequest, context: grpc.ServicerContext
               ) -> api.CommitResponse:
        _check_idempotency_key(request.idempotency_key)
        writes = [_mutation(m) for m in request.mutations]
        with self.node.txns.use(request.transaction_id) as txn:
            if writes:
                self.node.txns.write(txn, writes, _timeout(context))
            out = self.node.txns.commit(txn, _timeout(context), request.idempotency_key)
        return api.CommitResponse(commit_position=out.commit_position,
                                  rows_affected=out.rows_affected, replayed=out.replayed,
                                  committed_transaction_id=out.committed_by or txn.txn_id)

    @unary
    def Rollback(self, request: api.RollbackRequest, context: grpc.ServicerContext
                 ) -> api.RollbackResponse:
        with self.node.txns.use(request.transaction_id) as txn:
            self.node.txns.rollback(txn)
        return api.RollbackResponse()

    @unary
    def GetOutcome(self, request: api.GetOutcomeRequest, context: grpc.ServicerContext
                   ) -> api.GetOutcomeResponse:
        if not request.idempotency_key:
            raise InvalidInput("idempotency_key is required")
        _check_idempotency_key(request.idempotency_key)
        if request.settle:
            record = self._commit(commit.SettleKey(request.idempotency_key), context).value
        else:
            with self.node.reads.read() as view:
                record = view.idempotent_result(request.idempotency_key)
        return _outcome(record)


def _begun(node: Node, txn_id: str) -> api.BeginResponse:
    """What Begin answers for transaction ``txn_id`` of this node."""
    return api.BeginResponse(transaction_id=txn_id, node_id=node.cfg.node_id,
                             address=node.cfg.listen)


def _outcome(record: dict[str, Any] | None) -> api.GetOutcomeResponse:
    """What GetOutcome answers for an idempotency record (None: there is none)."""
    states = api.GetOutcomeResponse.State
    if record is None:
        return api.GetOutcomeResponse(state=states.UNKNOWN)
    failed = record.get("failed")
    if failed == commit.ABANDONED:
        return api.GetOutcomeResponse(state=states.ABANDONED)
    if failed is not None:
        return api.GetOutcomeResponse(state=states.FAILED, failure_code=str(failed),
                                      failure_message=str(record.get("msg", "")))
    return api.GetOutcomeResponse(state=states.APPLIED,
                                  commit_position=int(record.get("pos", 0)),
                                  rows_affected=int(record.get("rows", 0)))


def request_fingerprint(method: str, request: Any) -> str:
    """A digest of what a request asks: stored with its idempotency key, so that the key
    reused for another request is refused (``commit.replayed``). Of the request's bytes
    (deterministic: map entries in key order) and its method, so one digest costs a
    serialization in C, not a walk over the rows in Python; the key itself is in the bytes,
    which is the same for every retry."""
    body = request.SerializeToString(deterministic=True)
    return hashlib.blake2b(method.encode() + b"\0" + body, digest_size=16).hexdigest()


def _fingerprint_if_keyed(method: str, request: Any) -> str:
    return request_fingerprint(method, request) if request.idempotency_key else ""


def _check_idempotency_key(key: str) -> None:
    if key:
        idempotency.check_key(key)


def _check(c: pb.Condition) -> commit.Check:
    kind = c.WhichOneof("check")
    key = convert.key(c.key)
    if kind == "exists":
        return commit.Check(c.table, key, "exists", exists=c.exists)
    if kind == "version":
        return commit.Check(c.table, key, "version", version=c.version)
    if kind == "column_equals":
        return commit.Check(c.table, key, "column_equals", column=c.column_equals.column,
                            value=convert.value(c.column_equals.value))
    raise InvalidInput("condition has no check (exists, version or column_equals)")


class ClusterService(_Base, rpc.ClusterServiceServicer):
    """Cluster status."""

    @unary
    def Status(self, request: api.StatusRequest, context: grpc.ServicerContext
               ) -> api.StatusResponse:
        return self.node.status(local_only=request.local_only)

    @replication_stream
    def ReadLog(self, request: api.ReadLogRequest, context: grpc.ServicerContext
                ) -> Iterator[api.ReadLogResponse]:
        batch = request.batch_records or LOG_BATCH
        if batch > MAX_LOG_BATCH:
            raise InvalidInput(f"batch_records is at most {MAX_LOG_BATCH}")
        store, committer = self.node.store, self.node.committer
        with store.read() as view:
            oldest, last, _ = view.log_bounds()
        position = request.start_position or oldest
        end = position + request.max_records - 1 if request.max_records else None
        if not request.follow:
            end = last if end is None else min(end, last)
        # One snapshot per batch, not one for the stream: a record never changes once written,
        # and a long snapshot would pin the pages that truncation frees.
        seen, quiet_since = committer.batches, time.monotonic()
        version = store.version
        while (end is None or position <= end) and context.is_active() \
                and not self.node.gate.draining:
            want = batch if end is None else min(batch, end - position + 1)
            mark = version()  # before the read: wait_new
            with store.read() as view:
                got = view.log_stored(position, want)
                if request.follow:
                    oldest, last, _ = view.log_bounds()
            if got:
                yield api.ReadLogResponse(
                    records=[_log_record(pos, raw) for pos, raw in got],
                    oldest_position=oldest, last_position=last)
                position = got[-1][0] + 1
                quiet_since = time.monotonic()
                continue
            if not request.follow:
                return
            if time.monotonic() - quiet_since >= FOLLOW_HEARTBEAT_S:
                yield api.ReadLogResponse(oldest_position=oldest, last_position=last)
                quiet_since = time.monotonic()
            # Woken by this node's commits at once; other nodes' commits are seen within
            # CHANGE_POLL_S by the volume's version (no snapshot while nothing moves).
            seen = commit.wait_new(committer, version, seen, mark, FOLLOW_WAIT_S)

    @unary
    def ReportPosition(self, request: api.ReportPositionRequest,
                       context: grpc.ServicerContext) -> api.ReportPositionResponse:
        if not request.replica_id:
            raise InvalidInput("replica_id is required")
        self.node.sync_gate.report(request.replica_id, request.position)
        return api.ReportPositionResponse()

    def StreamPositions(self, request_iterator: Iterator[api.ReportPositionRequest],
                        context: grpc.ServicerContext) -> api.ReportPositionResponse:
        # Outside the gate on purpose: a stream lives as long as its replica follows, and a
        # draining node must not wait for it (it ends when the server stops).
        try:
            self.node.admission.replication.take(client_of(context.peer()))
        except ResourceExhausted as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        try:
            for request in request_iterator:
                if not request.replica_id:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "replica_id is required")
                self.node.sync_gate.report(request.replica_id, request.position)
        finally:
            self.node.admission.replication.give(client_of(context.peer()))
        return api.ReportPositionResponse()

    @replication_stream
    def CopyVolume(self, request: api.CopyVolumeRequest, context: grpc.ServicerContext
                   ) -> Iterator[api.CopyVolumeResponse]:
        # One snapshot for the whole copy: it is what makes the copy consistent (NB: it pins
        # the volume's pages for as long as the copy takes).
        with self.node.store.read() as view:
            position = view.commit_position()
            chunk: list[tuple[bytes, bytes]] = []
            size = 0
            for k, v in view.replicated_items():
                chunk.append((k, v))
                size += len(k) + len(v)
                if size >= COPY_CHUNK_BYTES:
                    if not context.is_active():
                        return
                    yield api.CopyVolumeResponse(position=position,
                                                 items=msgpack.packb(chunk, use_bin_type=True))
                    chunk, size = [], 0
            yield api.CopyVolumeResponse(position=position, done=True,
                                         items=msgpack.packb(chunk, use_bin_type=True))

    @unary
    def Drain(self, request: api.DrainRequest, context: grpc.ServicerContext
              ) -> api.DrainResponse:
        me, group = self.node.cfg.node_id, self.node.cfg.group
        if request.node_id and request.node_id not in (me, group):
            raise WrongNode(f"this is node {me}, not {request.node_id}; send Drain to that "
                            f"node's address")
        if group and request.node_id != me:  # the whole node: every one of its processes
            self.node.request_group_stop()
            me = group
        open_txns = self.node.request_stop()
        log.info("drain requested by %s: leaving with %d open transaction(s)", context.peer(),
                 open_txns)
        return api.DrainResponse(node_id=me, open_transactions=open_txns,
                                 grace_seconds=self.node.cfg.grace_s)
