"""Shardless through its generated stubs: the system under test.

The client's own cost is kept low: each client thread has its own gRPC channel (and TCP
connection) to node ``i % n``, calls the generated stubs directly (no helper, no idempotency
keys), and the channel retries UNAVAILABLE (a node's "nothing done", or a connection not yet
up). Interactive transactions send their calls to the node that began them
(``BeginResponse.address``). ABORTED (deadlock, lock timeout...), of a transaction or of a
one-shot write, raises ``Retry``: the call did nothing and is run again, as the API says.

:class:`RpcSession` holds the operations over a stubs object; the echo baseline
(``targets/echo.py``) runs the very same operations over stubs that echo bytes, so both make
the same calls with requests of the same size.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from msgpack import unpackb

from nodes.bench.targets import (
    ACCOUNTS_TABLE,
    INITIAL_BALANCE,
    KV_TABLE,
    LOAD_BATCH,
    Composite,
    Retry,
)
from nodes.config import MAX_MESSAGE_BYTES
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from shardless.v1 import types_pb2 as pb

if TYPE_CHECKING:
    from nodes.bench.options import Settings

RETRY_POLICY = {"maxAttempts": 5, "initialBackoff": "0.02s", "maxBackoff": "0.5s",
                "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}


def channel(address: str) -> grpc.Channel:
    """Open a channel of its own (own TCP connection) to one address, retrying UNAVAILABLE."""
    config = {"methodConfig": [{"name": [{"service": "shardless.v1.RowService"},
                                         {"service": "shardless.v1.TransactionService"},
                                         {"service": "shardless.bench.Echo"}],
                                "retryPolicy": RETRY_POLICY}]}
    return grpc.insecure_channel(address, options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(config)),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ])


class GrpcStubs:
    """The RowService and TransactionService methods of one channel, side by side."""

    def __init__(self, ch: grpc.Channel) -> None:
        rows = rpc.RowServiceStub(ch)
        txns = rpc.TransactionServiceStub(ch)
        self.Get = rows.Get
        self.BatchGet = rows.BatchGet
        self.Insert = rows.Insert
        self.Upsert = rows.Upsert
        self.Update = rows.Update
        self.Scan = rows.Scan
        self.Begin = txns.Begin
        self.Commit = txns.Commit
        self.Rollback = txns.Rollback


def int_key(k: int) -> pb.Key:
    """The primary key of record ``k``."""
    return pb.Key(parts=[pb.Value(int_value=k)])


def kv_row(k: int, value: bytes) -> pb.Row:
    """Record ``k`` with its value."""
    return pb.Row(columns={"id": pb.Value(int_value=k), "v": pb.Value(bytes_value=value)})


def account_row(k: int, balance: int) -> pb.Row:
    """Account ``k`` with its balance."""
    return pb.Row(columns={"id": pb.Value(int_value=k), "balance": pb.Value(int_value=balance)})


class RpcSession(Composite):
    """The operations over Shardless's RPCs (see ``nodes/bench/workloads.py`` for each kind).

    Args:
        stubs_at: Returns the stubs for an address (cached by the caller's session).
        home: This thread's node address.
        value: The value this thread writes.
        timeout_s: Each call's deadline.
    """

    def __init__(self, stubs_at: Callable[[str], Any], home: str, value: bytes,
                 timeout_s: float) -> None:
        self._stubs_at = stubs_at
        self.s = stubs_at(home)
        self.value = value
        self.t = timeout_s

    def read(self, key: int) -> int:
        """Point get."""
        return 1 if self.s.Get(api.GetRequest(table=KV_TABLE, key=int_key(key)),
                               timeout=self.t).found else 0

    def _write(self, method: Callable[..., Any], request: Any) -> None:
        try:
            method(request, timeout=self.t)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.ABORTED:
                raise Retry("ABORTED") from None
            raise

    def update(self, key: int) -> int:
        """Single-row upsert."""
        self._write(self.s.Upsert,
                    api.WriteRowsRequest(table=KV_TABLE, rows=[kv_row(key, self.value)]))
        return 1

    def insert(self, key: int) -> int:
        """Insert of a new key."""
        self._write(self.s.Insert,
                    api.WriteRowsRequest(table=KV_TABLE, rows=[kv_row(key, self.value)]))
        return 1

    def scan(self, key: int, n: int) -> int:
        """Up to ``n`` rows from ``key`` on, packed (as the client helper asks), decoded."""
        req = api.ScanRequest(table=KV_TABLE, start=pb.Bound(key=int_key(key)), limit=n,
                              packed=True)
        return sum(len(unpackb(m.packed.rows, raw=False))
                   for m in self.s.Scan(req, timeout=self.t))

    def batch_get(self, keys: list[int]) -> int:
        """One call reading every key, packed (as the client helper asks), decoded."""
        resp = self.s.BatchGet(api.BatchGetRequest(table=KV_TABLE,
                                                   keys=[int_key(k) for k in keys],
                                                   packed=True),
                               timeout=self.t)
        return sum(1 for r in unpackb(resp.packed.rows, raw=False) if r is not None)

    def multi_write(self, keys: list[int]) -> int:
        """One call upserting every key (atomically)."""
        self._write(self.s.Upsert, api.WriteRowsRequest(
            table=KV_TABLE, rows=[kv_row(k, self.value) for k in keys]))
        return len(keys)

    def _transaction(self, first: Callable[[], Any], writes: Callable[[Any], list[pb.Mutation]]
                     ) -> int:
        """An interactive transaction in two calls: ``first`` reads with an inline begin (the
        response's ``begun`` names the transaction and its node), then Commit carries the
        ``writes(response)`` it stages (``CommitRequest.mutations``)."""
        try:
            resp = first()
        except grpc.RpcError as e:  # the node rolled the transaction back
            if e.code() == grpc.StatusCode.ABORTED:
                raise Retry("ABORTED") from None
            raise
        begun = resp.begun
        stubs = self._stubs_at(begun.address) if begun.address else self.s
        mutations = writes(resp)
        try:
            stubs.Commit(api.CommitRequest(transaction_id=begun.transaction_id,
                                           mutations=mutations), timeout=self.t)
            return len(mutations)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.ABORTED:
                raise Retry("ABORTED") from None
            try:
                stubs.Rollback(api.RollbackRequest(transaction_id=begun.transaction_id),
                               timeout=self.t)
            except grpc.RpcError:
                pass
            raise

    def rmw(self, key: int) -> int:
        """Get for update (beginning the transaction), then commit with the update."""
        return self._transaction(
            lambda: self.s.Get(api.GetRequest(table=KV_TABLE, key=int_key(key),
                                              for_update=True, begin=api.BeginRequest()),
                               timeout=self.t),
            lambda _resp: [pb.Mutation(table=KV_TABLE, kind=pb.Mutation.UPDATE,
                                       row=kv_row(key, self.value))])

    def bank(self, a: int, b: int, amount: int) -> int:
        """Read both accounts for update (one call, beginning the transaction), then commit
        with both updates."""
        def writes(resp: Any) -> list[pb.Mutation]:
            ra, rb = (r.row.columns["balance"].int_value for r in resp.results)
            return [pb.Mutation(table=ACCOUNTS_TABLE, kind=pb.Mutation.UPDATE,
                                row=account_row(a, ra - amount)),
                    pb.Mutation(table=ACCOUNTS_TABLE, kind=pb.Mutation.UPDATE,
                                row=account_row(b, rb + amount))]
        return self._transaction(
            lambda: self.s.BatchGet(api.BatchGetRequest(
                table=ACCOUNTS_TABLE, keys=[int_key(a), int_key(b)], for_update=True,
                begin=api.BeginRequest()), timeout=self.t),
            writes)

    def close(self) -> None:
        """Nothing to close: the target owns the channels."""


class ChannelTarget:
    """Per client process: channels opened per (thread, address), stubs made by ``make``."""

    def __init__(self, addresses: list[str], settings: Settings,
                 make: Callable[[grpc.Channel, str], Any] = lambda ch, _a: GrpcStubs(ch)
                 ) -> None:
        self.addresses = addresses
        self.settings = settings
        self._make = make
        self._channels: list[grpc.Channel] = []
        self._sessions: dict[int, RpcSession] = {}

    def session(self, index: int, rng: random.Random) -> RpcSession:
        """Client thread ``index``'s session, with a channel to node ``index % n``."""
        if index not in self._sessions:
            stubs: dict[str, Any] = {}

            def stubs_at(address: str) -> Any:
                if address not in stubs:
                    ch = channel(address)
                    self._channels.append(ch)
                    grpc.channel_ready_future(ch).result(timeout=self.settings.timeout_s)
                    stubs[address] = self._make(ch, address)
                return stubs[address]

            home = self.addresses[index % len(self.addresses)]
            self._sessions[index] = RpcSession(stubs_at, home,
                                               rng.randbytes(self.settings.value_size),
                                               self.settings.timeout_s)
        return self._sessions[index]

    def close(self) -> None:
        """Close every channel."""
        for ch in self._channels:
            ch.close()
        self._channels.clear()
        self._sessions.clear()


def open_target(params: Mapping[str, Any], settings: Settings) -> ChannelTarget:
    """The Shardless target of one client process."""
    return ChannelTarget(list(params["addresses"]), settings)


# -- in the parent -------------------------------------------------------------------------


def _schemas() -> list[pb.TableSchema]:
    return [
        pb.TableSchema(name=KV_TABLE, primary_key=["id"], columns=[
            pb.Column(name="id", type=pb.COLUMN_TYPE_INT64),
            pb.Column(name="v", type=pb.COLUMN_TYPE_BYTES)]),
        pb.TableSchema(name=ACCOUNTS_TABLE, primary_key=["id"], columns=[
            pb.Column(name="id", type=pb.COLUMN_TYPE_INT64),
            pb.Column(name="balance", type=pb.COLUMN_TYPE_INT64)]),
    ]


def _in_batches(rows: Iterable[pb.Row], size: int = LOAD_BATCH) -> Iterable[list[pb.Row]]:
    batch: list[pb.Row] = []
    for r in rows:
        batch.append(r)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def load(params: Mapping[str, Any], settings: Settings) -> None:
    """Create the bench tables afresh and load the records (and accounts) in batches."""
    with channel(params["addresses"][0]) as ch:
        tables = rpc.TableServiceStub(ch)
        rows = rpc.RowServiceStub(ch)
        t = max(settings.timeout_s, 30.0)
        for schema in _schemas():
            tables.DropTable(api.DropTableRequest(name=schema.name, if_exists=True), timeout=t)
            tables.CreateTable(api.CreateTableRequest(schema=schema), timeout=t)
        value = random.Random(settings.seed).randbytes(settings.value_size)
        for batch in _in_batches(kv_row(k, value) for k in range(settings.records)):
            rows.Upsert(api.WriteRowsRequest(table=KV_TABLE, rows=batch), timeout=t)
        if settings.uses_accounts:
            for batch in _in_batches(account_row(k, INITIAL_BALANCE)
                                     for k in range(settings.records)):
                rows.Upsert(api.WriteRowsRequest(table=ACCOUNTS_TABLE, rows=batch), timeout=t)


def bank_total(params: Mapping[str, Any]) -> int:
    """The sum of the balances, read by one scan (one snapshot)."""
    with channel(params["addresses"][0]) as ch:
        stream = rpc.RowServiceStub(ch).Scan(api.ScanRequest(table=ACCOUNTS_TABLE), timeout=60)
        return sum(r.columns["balance"].int_value for m in stream for r in m.rows)


def unload(params: Mapping[str, Any]) -> None:
    """Drop the bench tables."""
    with channel(params["addresses"][0]) as ch:
        tables = rpc.TableServiceStub(ch)
        for schema in _schemas():
            tables.DropTable(api.DropTableRequest(name=schema.name, if_exists=True), timeout=30)
