"""Interactive transactions in two calls: a read with an inline begin (``GetRequest.begin``,
``BatchGetRequest.begin``) and a Commit carrying the writes (``CommitRequest.mutations``), with
real etcd, real node processes and real gRPC.

What these tests pin down: the read runs in the transaction it opens (its lock holds off other
writers until the commit); the commit stages and commits its mutations atomically; a failed
read leaves no transaction behind; a refused mutation commits nothing and leaves the
transaction open; a retried commit with an idempotency key applies once; bad combinations get
INVALID_ARGUMENT.
"""

from __future__ import annotations

import grpc
import pytest

from shardless import connect
from shardless.client import to_key, to_row
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from shardless.v1 import types_pb2 as pb
from tests.harness.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _open_txns(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        st = rpc.ClusterServiceStub(ch).Status(api.StatusRequest(local_only=True), timeout=5)
    return len(st.transactions)


def _update(table: str, row: dict) -> pb.Mutation:  # type: ignore[type-arg]
    return pb.Mutation(table=table, kind=pb.Mutation.UPDATE, row=to_row(row))


def test_a_read_with_inline_begin_locks_until_the_commit_that_carries_the_write(
        cluster: Cluster) -> None:
    db = connect(cluster.addresses)
    db.create_table("acct", {"id": "int64", "n": "int64"}, primary_key="id")
    db.upsert("acct", [{"id": 1, "n": 10}, {"id": 2, "n": 20}])
    with grpc.insecure_channel(cluster.addresses[0]) as ch:
        rows = rpc.RowServiceStub(ch)
        got = rows.BatchGet(api.BatchGetRequest(table="acct", keys=[to_key(1), to_key(2)],
                                                for_update=True, begin=api.BeginRequest()),
                            timeout=10)
        begun = got.begun
        assert begun.transaction_id and begun.address == cluster.addresses[0]
        assert [r.row.columns["n"].int_value for r in got.results] == [10, 20]
        # The read locked both rows: a one-shot write of one waits, and gives up at its deadline.
        with connect([cluster.addresses[1]], refresh_s=None, attempts=1) as other:
            with pytest.raises(grpc.RpcError) as blocked:
                rpc.RowServiceStub(other.channel).Upsert(api.WriteRowsRequest(
                    table="acct", rows=[to_row({"id": 2, "n": 0})]), timeout=1.0)
            assert blocked.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                            grpc.StatusCode.ABORTED)
        done = rpc.TransactionServiceStub(ch).Commit(api.CommitRequest(
            transaction_id=begun.transaction_id,
            mutations=[_update("acct", {"id": 1, "n": 7}), _update("acct", {"id": 2, "n": 23})]),
            timeout=10)
        assert done.rows_affected == 2 and done.commit_position > 0
    assert db.get("acct", 1)["n"] == 7 and db.get("acct", 2)["n"] == 23
    assert db.get("acct", 1).version == done.commit_position
    assert _open_txns(cluster.addresses[0]) == 0
    db.close()


def test_a_failed_inline_begin_read_leaves_no_transaction(cluster: Cluster) -> None:
    db = connect(cluster.addresses)
    db.create_table("t", {"id": "int64"}, primary_key="id")
    with grpc.insecure_channel(cluster.addresses[1]) as ch:
        rows = rpc.RowServiceStub(ch)
        with pytest.raises(grpc.RpcError) as missing:
            rows.Get(api.GetRequest(table="nope", key=to_key(1), begin=api.BeginRequest()),
                     timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as ro:
            rows.Get(api.GetRequest(table="t", key=to_key(1), for_update=True,
                                    begin=api.BeginRequest(read_only=True)), timeout=10)
        assert ro.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as both:
            rows.Get(api.GetRequest(table="t", key=to_key(1), transaction_id="x@y",
                                    begin=api.BeginRequest()), timeout=10)
        assert both.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _open_txns(cluster.addresses[1]) == 0
        # A read that finds nothing still opens the transaction.
        got = rows.Get(api.GetRequest(table="t", key=to_key(1), begin=api.BeginRequest()),
                       timeout=10)
        assert not got.found and got.begun.transaction_id
        assert _open_txns(cluster.addresses[1]) == 1
        rpc.TransactionServiceStub(ch).Rollback(
            api.RollbackRequest(transaction_id=got.begun.transaction_id), timeout=10)
    assert _open_txns(cluster.addresses[1]) == 0
    db.close()


def test_a_refused_commit_mutation_commits_nothing_and_keeps_the_transaction(
        cluster: Cluster) -> None:
    db = connect(cluster.addresses)
    db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
    db.upsert("t", {"id": 1, "v": "a"})
    with grpc.insecure_channel(cluster.addresses[2]) as ch:
        rows, txns = rpc.RowServiceStub(ch), rpc.TransactionServiceStub(ch)
        got = rows.Get(api.GetRequest(table="t", key=to_key(1), for_update=True,
                                      begin=api.BeginRequest()), timeout=10)
        tid = got.begun.transaction_id
        with pytest.raises(grpc.RpcError) as refused:
            txns.Commit(api.CommitRequest(transaction_id=tid, mutations=[
                _update("t", {"id": 1, "v": "b"}), _update("t", {"id": 99, "v": "x"})]),
                timeout=10)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert db.get("t", 1)["v"] == "a"
        assert _open_txns(cluster.addresses[2]) == 1
        # Still open and usable: commit with a good mutation and an idempotency key.
        first = txns.Commit(api.CommitRequest(
            transaction_id=tid, idempotency_key="k-inline-1",
            mutations=[_update("t", {"id": 1, "v": "c"})]), timeout=10)
        # A retry of the whole transaction with the same key (as after a lost reply) applies
        # none of its mutations.
        retry = rows.Get(api.GetRequest(table="t", key=to_key(1), for_update=True,
                                        begin=api.BeginRequest()), timeout=10)
        again = txns.Commit(api.CommitRequest(
            transaction_id=retry.begun.transaction_id, idempotency_key="k-inline-1",
            mutations=[_update("t", {"id": 1, "v": "d"})]), timeout=10)
        assert again.replayed and again.commit_position == first.commit_position
    assert db.get("t", 1)["v"] == "c"
    assert db.get("t", 1).version == first.commit_position
    db.close()
