"""The echo baseline: Shardless's operations, each RPC replaced by one echo call.

The operations are Shardless's own (``targets/cluster.py``'s :class:`RpcSession`, so the same
RPCs in the same order); only the stubs differ. Each stub method serializes the real request
message (so the client pays the same encoding cost), sends it as the echo payload, and asks for
a reply of the size the real response would have: a canned response of the same shape (the
row, with a value of ``--value-size`` bytes; the scan's rows, in as many messages as the node
sends; ...), which the method then parses from its bytes and returns, so the client pays the
same decoding and the same work on the result as against a real node. What is left is the
server's own cost: that is what the echo ratio measures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from msgpack import packb

from nodes.bench.echo import STREAM, UNARY, header
from nodes.bench.targets import ACCOUNTS_TABLE, INITIAL_BALANCE
from nodes.bench.targets.cluster import ChannelTarget, account_row, kv_row
from shardless.v1 import services_pb2 as api
from shardless.v1 import types_pb2 as pb

if TYPE_CHECKING:
    from nodes.bench.options import Settings

SCAN_CHUNK_ROWS = 512
"""Rows per streamed message, as the node sends them (``nodes/server.py``)."""
VERSION = 123_456_789
"""A plausible row version / commit position, so canned replies have realistic sizes."""
_PACKED, _BEGIN = 1 << 40, 1 << 41
"""Mark a packed request, an inline begin, in the canned replies' key (beside its count)."""
_COUNT = (1 << 40) - 1


def _flags(request: Any, n: int) -> int:
    """``n`` with the flags of ``request`` (packed, inline begin)."""
    return n | (_PACKED if getattr(request, "packed", False) else 0) | \
        (_BEGIN if request.HasField("begin") else 0)


class EchoStubs:
    """Stub methods named as Shardless's, each one echo call with real-sized messages."""

    def __init__(self, ch: grpc.Channel, address: str, value_size: int) -> None:
        self._unary = ch.unary_unary(UNARY)
        self._stream = ch.unary_stream(STREAM)
        self._address = address
        self._value = bytes(value_size)
        self._canned: dict[tuple[str, str, int], Any] = {}
        self.Get = self._method("Get", lambda r: (r.table, _flags(r, 1)),
                                lambda t, n: self._begun(n, self._get(t, 1)))
        self.BatchGet = self._method(
            "BatchGet", lambda r: (r.table, _flags(r, len(r.keys))),
            lambda t, n: self._begun(n, self._batch_get(t, n & _COUNT, bool(n & _PACKED))))
        self.Insert = self._method("Insert", lambda r: ("", len(r.rows)), self._write)
        self.Upsert = self._method("Upsert", lambda r: ("", len(r.rows)), self._write)
        self.Update = self._method("Update", lambda r: ("", len(r.rows)), self._write)
        self.Begin = self._method("Begin", lambda r: ("", 0), lambda _t, _n: api.BeginResponse(
            transaction_id="5f3a9c1e.123456@node-1", node_id="node-1", address=address))
        self.Commit = self._method("Commit", lambda r: ("", 0), lambda _t, _n:
                                   api.CommitResponse(commit_position=VERSION, rows_affected=2))
        self.Rollback = self._method("Rollback", lambda r: ("", 0),
                                     lambda _t, _n: api.RollbackResponse())

    def _begun(self, flags: int, reply: Any) -> Any:
        """``reply`` with the ``begun`` of an inline begin, if the request had one."""
        if flags & _BEGIN:
            reply.begun.CopyFrom(api.BeginResponse(transaction_id="5f3a9c1e.123456@node-1",
                                                   node_id="node-1", address=self._address))
        return reply

    def _row(self, table: str, k: int) -> Any:
        row = account_row(k, INITIAL_BALANCE) if table == ACCOUNTS_TABLE else kv_row(k, self._value)
        row.version = VERSION
        return row

    def _get(self, table: str, _n: int) -> api.GetResponse:
        return api.GetResponse(found=True, row=self._row(table, 4_242))

    def _packed(self, table: str, n: int) -> pb.PackedRows:
        """``n`` rows as the node packs them: the stored layout, ``[version, [values]]``."""
        columns = ["id", "balance"] if table == ACCOUNTS_TABLE else ["id", "v"]
        values = (lambda k: [k, INITIAL_BALANCE]) if table == ACCOUNTS_TABLE else \
            (lambda k: [k, self._value])
        return pb.PackedRows(columns=columns, rows=packb(
            [[VERSION, values(4_242 + i)] for i in range(n)], use_bin_type=True))

    def _batch_get(self, table: str, n: int, packed: bool = False) -> api.BatchGetResponse:
        if packed:
            return api.BatchGetResponse(packed=self._packed(table, n))
        return api.BatchGetResponse(results=[api.GetResponse(found=True,
                                                             row=self._row(table, 4_242 + i))
                                             for i in range(n)])

    @staticmethod
    def _write(_table: str, n: int) -> api.WriteResponse:
        return api.WriteResponse(commit_position=VERSION, rows_affected=n)

    def _method(self, name: str, shape: Callable[[Any], tuple[str, int]],
                build: Callable[[str, int], Any]) -> Callable[..., Any]:
        def call(request: Any, timeout: float | None = None) -> Any:
            table, n = shape(request)
            key = (name, table, n)
            canned = self._canned.get(key)
            if canned is None:
                reply = build(table, n)
                canned = self._canned[key] = (type(reply), reply.SerializeToString())
            kind, raw = canned
            self._unary(header(len(raw)) + request.SerializeToString(), timeout=timeout)
            # Parse a reply of the real shape, as a client of the real server must.
            return kind.FromString(raw)
        return call

    def Scan(self, request: api.ScanRequest, timeout: float | None = None
             ) -> Iterator[api.ScanResponse]:
        """Echo a scan: the reply is as many messages as the node streams, of the same size."""
        n = int(request.limit)
        key = ("Scan", request.table, n | (_PACKED if request.packed else 0))
        replies = self._canned.get(key)
        if replies is None:
            chunks = range(0, max(n, 1), SCAN_CHUNK_ROWS)
            if request.packed:
                replies = [api.ScanResponse(packed=self._packed(
                    request.table, min(SCAN_CHUNK_ROWS, n - i))).SerializeToString()
                    for i in chunks]
            else:
                rows = [self._row(request.table, 4_242 + i) for i in range(n)]
                replies = [api.ScanResponse(rows=rows[i:i + SCAN_CHUNK_ROWS])
                           .SerializeToString() for i in chunks]
            self._canned[key] = replies
        size = sum(len(m) for m in replies)
        for _ in self._stream(header(size, len(replies)) + request.SerializeToString(),
                              timeout=timeout):
            pass
        # Parse replies of the real shape, as a client of the real server must.
        return iter([api.ScanResponse.FromString(m) for m in replies])


def open_target(params: Mapping[str, Any], settings: Settings) -> ChannelTarget:
    """The echo target of one client process: Shardless's sessions over echo stubs."""
    return ChannelTarget([params["address"]], settings,
                         make=lambda ch, address: EchoStubs(ch, address, settings.value_size))


def load(params: Mapping[str, Any], settings: Settings) -> None:
    """Nothing to load: the echo server keeps no data."""


def bank_total(params: Mapping[str, Any]) -> int | None:
    """None: the echo server keeps no balances."""
    return None


def unload(params: Mapping[str, Any]) -> None:
    """Nothing to remove."""
