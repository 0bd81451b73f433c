"""The change stream: ``ChangeService`` (Watch, Hold, Release) and the retention holds.

Owns: serving a table's committed changes in log order (``storage/changes.py`` turns records
into changes), on a primary node or over a copy of the volume (a replica, a read-only node:
``ChangeService.on_copy``), and the holds that keep the commit log for consumers.
docs/changes.md is the user's account.

Watch reads the log one snapshot per message (the records before a position never change, and
a long snapshot would pin the pages truncation frees), through the node's read barrier, so it
never delivers a commit the synchronous replicas do not hold. It produces a message only when
gRPC has taken the last one (a generator: flow control reaches back to the log), so a slow
consumer costs one worker thread and one message of memory, never slows commits or other
streams, and is ended by the stream watch (``--stream-stall-timeout``) when it takes nothing
for that long; one whose place the log no longer holds gets OUT_OF_RANGE naming the oldest
position, as every Watch from a place that is gone does.

Holds: ``<cluster>/holds/<name>`` in etcd, ``{"position", "ts", "node"}`` on a lease of the hold's
TTL, granted by the node that took the Hold call (a renewal puts it again on a new lease and
revokes the old one). The leader keeps every position from the smallest hold on (as it does for
replicas, ``nodes/leader.py``), within the log's hard bounds (``--log-max-mb``,
``--log-max-age``), which no consumer can lift: a consumer that dies stops holding within its
TTL.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from lockmgr import EtcdClient
from nodes import convert, query
from nodes.commit import wait_new
from nodes.status import stream, unary
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from shardless.v1 import types_pb2 as pb
from storage import InvalidInput, LogTruncated, NotFound, Record, commitlog, keys
from storage.changes import (
    CREATE_TABLE,
    DELETE_ROW,
    DROP_TABLE,
    PUT_ROW,
    RowChange,
    Schemas,
    record_changes,
)

if TYPE_CHECKING:
    from nodes.node import Node

log = logging.getLogger(__name__)

DEFAULT_MAX_CHANGES, MAX_CHANGES = 256, 10_000
RECORDS_PER_READ = 256
TAIL_RECORDS, TAIL_BATCH = 4096, 512  # the shared tail: records kept, read at once
IDLE_S = 10.0  # the tail forgets what it holds after this long without a stream
FAILED_WAIT_S = 1.0  # after a failed turn (streams read the log themselves meanwhile)
HEARTBEAT_S = 1.0
# A stream at the end of the log sends at most one message per MESSAGE_GAP_S: each message
# costs the node a send and a thread's wake whatever it holds, and ten streams each sending
# every commit on its own took half the commit rate; a stream behind sends full messages
# without a pause.
MESSAGE_GAP_S = 0.01
POLL_S = 0.05  # the longest a stream at the end of the log waits before looking again
DEFAULT_HOLD_TTL_S, MAX_HOLD_TTL_S = 60.0, 86_400.0
_KINDS = {PUT_ROW: api.Change.PUT, DELETE_ROW: api.Change.DELETE,
          CREATE_TABLE: api.Change.CREATE_TABLE, DROP_TABLE: api.Change.DROP_TABLE}


def holds_prefix(cluster: str) -> bytes:
    return f"{cluster}/holds/".encode()


def read_holds(etcd: EtcdClient, cluster: str) -> list[tuple[str, int]]:
    """Every hold, (name, position). Raises EtcdUnavailable."""
    prefix = holds_prefix(cluster)
    out = []
    for kv in etcd.get_prefix(prefix):
        try:
            out.append((kv.key[len(prefix):].decode(), int(json.loads(kv.value)["position"])))
        except (ValueError, KeyError, TypeError):
            log.warning("hold %r is malformed; ignored", kv.key)
    return out


def needed_by_holds(holds: Sequence[tuple[str, int]]) -> int | None:
    """The oldest position a hold keeps (None: no hold)."""
    return min((p for _, p in holds), default=None)


class ChangeService(rpc.ChangeServiceServicer):
    """Watch, Hold and Release on a node of the primary; or Watch alone on a copy of the volume
    (a replica, a read-only node on a replica's volume: :meth:`on_copy`), where Hold and
    Release are refused naming a primary node, as writes are."""

    def __init__(self, node: Node, *, wakeup: Any = None,
                 version: Callable[[], int] | None = None, refuse: Any = None) -> None:
        self.node = node
        self._wakeup, self._version, self._refuse = wakeup, version, refuse

    @classmethod
    def on_copy(cls, face: Any, source: Any) -> ChangeService:
        """Watch over ``face`` (``nodes/readface.py``: its reads are the copy's, at its
        position), for a process that keeps a copy (``source``: a ``ReadSource``). The copy's
        own commits say when it moved: its version, looked at every CHANGE_POLL_S (the copy is
        written by the replica's process); ``source.wait_applied`` wakes the wait sooner where
        it can (in the replica's own process)."""

        def version() -> int:
            store = source.serving_store
            if store is None:
                return 0  # no copy to read: the stream's next read says so (UNAVAILABLE)
            return int(store.version())

        return cls(face, wakeup=CopyWakeup(source), version=version, refuse=face.committer)

    @stream
    def Watch(self, request: api.WatchRequest, context: grpc.ServicerContext
              ) -> Iterator[api.WatchResponse]:
        per_message = request.max_changes or DEFAULT_MAX_CHANGES
        if per_message > MAX_CHANGES:
            raise InvalidInput(f"max_changes is at most {MAX_CHANGES}")
        if not request.table:
            raise InvalidInput("table is required")
        node = self.node
        reads = node.reads
        committer = self._wakeup if self._wakeup is not None else node.committer
        with reads.read() as view:
            oldest, last, _ = view.log_bounds()
            current = view.tables()
        schemas = Schemas(current)
        schema = schemas.named(request.table)
        from_now = request.from_now
        if schema is None and (from_now or request.HasField("start")
                               or request.HasField("end")):
            raise NotFound(f"table {request.table!r} does not exist")
        lo = hi = None
        if schema is not None:
            start = convert.key(request.start.key) if request.HasField("start") else None
            end = convert.key(request.end.key) if request.HasField("end") else None
            lo, hi = query.byte_range(schema, start, request.start.exclusive, end,
                                      request.end.exclusive)
        position = last + 1 if from_now else (request.start_position or oldest)
        skip = 0 if from_now else request.start_index

        def wanted(c: Any) -> bool:
            if c.table != request.table:
                return False
            if c.kind in (CREATE_TABLE, DROP_TABLE):
                return True
            return (lo is None or c.encoded_key >= lo) and (hi is None or c.encoded_key < hi)

        version = self._version
        if version is None and self._wakeup is None and node.store is not None:
            version = node.store.version
        seen, quiet_since, mark = committer.batches, time.monotonic(), 0
        # The message being built: its changes, encoded; the last commit it holds whole.
        out, count, upto = bytearray(), 0, 0
        tail: LogTail | None = getattr(node, "log_tail", None)
        if tail is not None:
            tail.acquire()
        try:
            while context.is_active() and not node.gate.draining:
                got = tail.since(position, POLL_S) if tail is not None else None
                if got is not None:  # from the node's shared tail: decoded once for all
                    decoded, oldest, last = got
                    for _record, changes, _wires in decoded:  # keep our own schemas in step
                        for c in changes:
                            if c.kind == CREATE_TABLE and c.schema is not None:
                                schemas.add(c.schema)
                else:
                    mark = version() if version is not None else 0  # before the read: wait_new
                    decoded, oldest, last = _read(reads, position, schemas)
                for record, changes, wires in decoded:
                    for i, c in enumerate(changes):
                        if (record.position == position and c.index < skip) or not wanted(c):
                            continue
                        wire = wires[i]
                        if wire is None:  # the first stream of the node to send it encodes it
                            wire = wires[i] = change_wire(c)
                        out += wire
                        count += 1
                        if count >= per_message:
                            yield watch_message(out, upto, oldest, last)
                            out, count, upto = bytearray(), 0, 0
                    upto = record.position
                    position, skip = record.position + 1, 0
                if count or (time.monotonic() - quiet_since >= HEARTBEAT_S):
                    built, more = time.monotonic(), count > 0
                    yield watch_message(out, position - 1, oldest, last)
                    out, count, upto = bytearray(), 0, 0
                    quiet_since = time.monotonic()
                    if more:  # at the end of the log: let the next commits gather (MESSAGE_GAP_S)
                        rest = built + MESSAGE_GAP_S - quiet_since
                        if rest > 0:
                            time.sleep(rest)
                if not decoded and got is None:
                    seen = wait_new(committer, version, seen, mark, POLL_S)
        finally:
            if tail is not None:
                tail.release()

    @unary
    def Hold(self, request: api.HoldRequest, context: grpc.ServicerContext
             ) -> api.HoldResponse:
        name = request.name
        if not name or "/" in name or not name.isprintable() or len(name) > 200:
            raise InvalidInput("name must be 1 to 200 printable characters without '/'")
        if self._refuse is not None:  # on a copy: holds are the primary's (its log)
            self._refuse.hold()
        ttl = request.ttl_seconds or DEFAULT_HOLD_TTL_S
        if not 1 <= ttl <= MAX_HOLD_TTL_S:
            raise InvalidInput(f"ttl_seconds must be between 1 and {MAX_HOLD_TTL_S:g}")
        node = self.node
        assert node.etcd is not None and node.store is not None
        key = holds_prefix(node.cfg.cluster) + name.encode()
        old = node.etcd.get(key)
        lease, _granted = node.etcd.grant(int(ttl + 0.999))
        node.etcd.put(key, json.dumps({"position": request.position, "ts": time.time(),
                                       "node": node.cfg.node_id,
                                       "lease": lease}).encode(), lease)
        if old is not None:
            try:
                prev = int(json.loads(old.value)["lease"])
                if prev != lease:
                    node.etcd.revoke(prev)
            except (ValueError, KeyError, TypeError):
                pass
            except Exception as e:  # the old lease may be gone already
                log.info("hold %s: old lease not revoked: %s", name, e)
        with node.store.read() as view:
            oldest = view.log_bounds()[0]
        return api.HoldResponse(oldest_position=oldest)

    @unary
    def Release(self, request: api.ReleaseRequest, context: grpc.ServicerContext
                ) -> api.ReleaseResponse:
        if self._refuse is not None:
            self._refuse.release()
        node = self.node
        assert node.etcd is not None
        key = holds_prefix(node.cfg.cluster) + request.name.encode()
        return api.ReleaseResponse(released=node.etcd.delete(key))


class CopyWakeup:
    """What a stream on a copy of the volume waits on instead of a committer (it has none):
    ``batches`` never moves, so ``wait_new`` ends on the copy's version; each wait is the
    source's ``wait_applied``, which ends early when this process applies (a replica)."""

    batches = 0

    def __init__(self, source: Any) -> None:
        self._source = source

    def wait_for_commit(self, seen: int, timeout_s: float) -> int:
        self._source.wait_applied(timeout_s)
        return 0


# Records with their changes, and each change's encoding in a WatchResponse (``change_wire``),
# made by the first stream that sends it and kept with the record for the others.
Decoded = list[tuple[Record, list[RowChange], list[bytes | None]]]


def _read(reads: Any, position: int, schemas: Schemas) -> tuple[Decoded, int, int]:
    """Up to RECORDS_PER_READ records from ``position``, decoded, and the log's bounds, read
    from one snapshot (through the read barrier).

    Raises:
        LogTruncated: ``position`` is gone.
    """
    with reads.read() as view:
        oldest, last, _ = view.log_bounds()
        records = [commitlog.decode(keys.log(p), raw)
                   for p, raw in view.log_stored(position, RECORDS_PER_READ)] \
            if position <= last else []

        def find_dropped(table_id: int) -> None:
            for r in view.log(position):
                if any(c.op == DROP_TABLE for c in r.changes):
                    schemas.learn_dropped(r)
                    if schemas.get(table_id) is not None:
                        return

        decoded = []
        for r in records:
            changes = record_changes(r, schemas, find_dropped=find_dropped)
            decoded.append((r, changes, [None] * len(changes)))
    return decoded, oldest, last


class LogTail:
    """The new end of the commit log, read and decoded once for every Watch on the node.

    While some stream uses it, one thread follows the log (woken at once by this node's commits,
    and within CHANGE_POLL_S of another node's: ``wait_new``), through the read barrier, and
    keeps the last TAIL_RECORDS records decoded; streams at the end of the log take theirs from
    here instead of each reading and decoding the same records (what made ten followers cost
    commits a fifth). A stream behind what the tail holds reads the log itself until it catches
    up. Its schemas start from the catalog when it starts and follow the records' catalog ops,
    so every row of a record it holds decodes. Idle (no stream) for IDLE_S, it forgets
    everything and starts from the then end of the log when a stream comes.
    """

    def __init__(self, reads: Any, committer: Any, keep: int = 0,
                 version: Callable[[], int] | None = None) -> None:
        self._reads, self._committer, self._version = reads, committer, version
        self._keep = keep or TAIL_RECORDS
        self._cond = threading.Condition()
        self._items: collections.deque[tuple[Record, list[RowChange], list[bytes | None]]] = \
            collections.deque()
        self._next = 0  # the position after the last one held; 0: not started
        self._schemas: Schemas | None = None
        self._bounds = (0, 0)
        self._users = 0
        self._stopped = False
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        with self._cond:
            self._users += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="log-tail", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._users -= 1

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def since(self, position: int, wait_s: float) -> tuple[Decoded, int, int] | None:
        """The records held from ``position`` on (waiting up to ``wait_s`` for the first when
        there is none yet) and the log's bounds; None when ``position`` is before what the
        tail holds (or it has not started): read the log instead."""
        with self._cond:
            if self._schemas is None:
                return None
            first = self._items[0][0].position if self._items else self._next
            if position < first:
                return None
            if position >= self._next:
                self._cond.wait(wait_s)
                first = self._items[0][0].position if self._items else self._next
                if position < first:
                    return None
            at = position - first
            got = list(itertools.islice(self._items, at, at + RECORDS_PER_READ))
            return got, *self._bounds

    def _reset(self) -> None:
        self._schemas, self._next = None, 0
        self._items.clear()

    def _run(self) -> None:
        # Nothing may end this thread but stop(): the streams at the head take their changes
        # from it alone, and would wait on a dead tail for ever (sending heartbeats).
        seen = self._committer.batches
        idle_since: float | None = None
        while True:
            try:
                step = self._step(seen, idle_since)
            except Exception as e:  # a failing read (volume, barrier): streams read themselves
                log.warning("log tail: %s", e)
                with self._cond:
                    self._reset()
                    self._cond.wait(FAILED_WAIT_S)
                continue
            if step is None:
                return
            seen, idle_since = step

    def _step(self, seen: int, idle_since: float | None) -> tuple[int, float | None] | None:
        """One turn of the thread: follow the log once (or wait while no stream uses it).
        Returns the committer's batch count and since when the tail is idle; None: stopped."""
        with self._cond:
            if self._stopped:
                return None
            if self._users == 0:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > IDLE_S:
                    self._reset()
                self._cond.wait(1.0)
                return seen, idle_since
            schemas, nxt = self._schemas, self._next
        mark = self._version() if self._version is not None else 0
        try:
            with self._reads.read() as view:
                oldest, last, _ = view.log_bounds()
                if schemas is None:  # start at the end of the log
                    schemas, nxt, records = Schemas(view.tables()), last + 1, []
                else:
                    records = [commitlog.decode(keys.log(p), raw)
                               for p, raw in view.log_stored(nxt, TAIL_BATCH)] \
                        if nxt <= last else []
            decoded: Decoded = []
            for r in records:
                changes = record_changes(r, schemas)
                decoded.append((r, changes, [None] * len(changes)))
        except LogTruncated:  # idle long enough for the log to move past it: start over
            with self._cond:
                self._reset()
            return seen, None
        with self._cond:
            if self._schemas is None and schemas is not None and nxt == last + 1:
                self._schemas = schemas
            self._items.extend(decoded)
            while len(self._items) > self._keep:
                self._items.popleft()
            self._next = decoded[-1][0].position + 1 if decoded else nxt
            self._bounds = (oldest, last)
            self._cond.notify_all()
        if not records:
            seen = wait_new(self._committer, self._version, seen, mark, POLL_S)
        return seen, None


def add_change_service(servicer: ChangeService, server: grpc.Server) -> None:
    """Register ``servicer`` as ``rpc.add_ChangeServiceServicer_to_server`` does, except that
    Watch's messages are bytes already (``watch_message``) and are sent as they are."""
    handlers = {
        "Watch": grpc.unary_stream_rpc_method_handler(
            servicer.Watch, request_deserializer=api.WatchRequest.FromString,
            response_serializer=_as_bytes),
        "Hold": grpc.unary_unary_rpc_method_handler(
            servicer.Hold, request_deserializer=api.HoldRequest.FromString,
            response_serializer=api.HoldResponse.SerializeToString),
        "Release": grpc.unary_unary_rpc_method_handler(
            servicer.Release, request_deserializer=api.ReleaseRequest.FromString,
            response_serializer=api.ReleaseResponse.SerializeToString),
    }
    name = api.DESCRIPTOR.services_by_name["ChangeService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


def _as_bytes(message: Any) -> bytes:
    if isinstance(message, bytes):
        return message
    return message.SerializeToString()  # a WatchResponse object (not what Watch yields now)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def change_wire(c: Any) -> bytes:
    """Change ``c`` encoded as one element of ``WatchResponse.changes`` (field 1,
    length-delimited): a message's changes are these, one after another (the protobuf
    encoding of a repeated field), so each change is encoded once however many streams send
    it."""
    body = _change(c).SerializeToString()
    return b"\x0a" + _varint(len(body)) + body


def watch_message(changes: bytes | bytearray, position: int, oldest: int, last: int) -> bytes:
    """A ``WatchResponse``, encoded: ``changes`` (``change_wire``'s, concatenated), then
    ``position``, ``oldest_position`` and ``last_position`` (fields 2, 3, 4; left out when 0,
    as protobuf does)."""
    out = bytearray(changes)
    for tag, value in ((0x10, position), (0x18, oldest), (0x20, last)):
        if value:
            out.append(tag)
            out += _varint(value)
    return bytes(out)


def _change(c: Any) -> api.Change:
    out = api.Change(position=c.position, index=c.index, kind=_KINDS[c.kind], ts=c.ts,
                    table=c.table)
    if c.kind in (PUT_ROW, DELETE_ROW) and c.key:
        out.key.CopyFrom(pb.Key(parts=[convert.to_value(v) for v in c.key]))
    if c.kind == PUT_ROW and c.values is not None:
        convert.fill_row(out.row, c.values, c.position)
    if c.kind == CREATE_TABLE and c.schema is not None:
        out.schema.CopyFrom(convert.to_schema(c.schema))
    return out
