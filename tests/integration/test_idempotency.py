"""Exactly-once writes: a retry with the same idempotency key, on any node, applies nothing."""

from __future__ import annotations

import grpc
import pytest

from shardless import Condition, Mutation, connect
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from shardless.v1 import types_pb2 as pb
from tests.harness.cluster import Cluster

pytestmark = pytest.mark.integration


def test_a_one_shot_write_retried_on_another_node_is_applied_once(cluster: Cluster) -> None:
    """Two Inserts with one key on two nodes: the second replays the first result."""
    a, b = (rpc.RowServiceStub(grpc.insecure_channel(cluster[i].address)) for i in (0, 1))
    connect(cluster.addresses).create_table("t", {"k": "int64", "v": "string"},
                                            primary_key="k")
    row = pb.Row(columns={"k": pb.Value(int_value=1), "v": pb.Value(string_value="x")})
    first = a.Insert(api.WriteRowsRequest(table="t", rows=[row], idempotency_key="op-1"),
                     timeout=10)
    again = b.Insert(api.WriteRowsRequest(table="t", rows=[row], idempotency_key="op-1"),
                     timeout=10)
    assert not first.replayed and again.replayed
    assert again.commit_position == first.commit_position and again.rows_affected == 1
    # Without the key the same insert is a new write, and fails: the row exists.
    with pytest.raises(grpc.RpcError) as e:
        b.Insert(api.WriteRowsRequest(table="t", rows=[row]), timeout=10)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_an_increment_retried_with_its_key_counts_once_and_replays_its_reads(
        cluster: Cluster) -> None:
    """A read-modify-write Execute repeated with one key changes the counter once, and the
    repeat returns the first call's reads, not the current state."""
    dbs = [connect([addr]) for addr in cluster.addresses]
    dbs[0].create_table("c", {"k": "int64", "n": "int64"}, primary_key="k")
    dbs[0].insert("c", {"k": 1, "n": 0})
    for i in range(5):
        key = f"inc-{i}"
        cur = dbs[0].get("c", 1)
        results = [db.execute(conditions=[Condition.version("c", 1, cur.version)],
                              reads=[("c", 1)],
                              writes=[Mutation.update("c", {"k": 1, "n": cur["n"] + 1})],
                              idempotency_key=key) for db in dbs]
        assert len({r.commit_position for r in results}) == 1
        assert all(r.reads[0]["n"] == i for r in results)
    assert dbs[2].get("c", 1)["n"] == 5


def test_an_interactive_transaction_retried_with_its_commit_key_commits_once(
        cluster: Cluster) -> None:
    """The same transaction run twice (on two nodes) with one commit key applies once."""
    dbs = [connect([addr]) for addr in cluster.addresses]
    dbs[0].create_table("acct", {"id": "int64", "bal": "int64"}, primary_key="id")
    dbs[0].insert("acct", [{"id": 1, "bal": 100}, {"id": 2, "bal": 0}])
    positions = []
    for db in dbs[:2]:
        t = db.begin()
        a = t.get("acct", 1, for_update=True)
        b = t.get("acct", 2, for_update=True)
        t.update("acct", [{"id": 1, "bal": a["bal"] - 30}, {"id": 2, "bal": b["bal"] + 30}])
        positions.append(t.commit(idempotency_key="transfer-7"))
    assert positions[0] == positions[1] > 0
    assert [r["bal"] for r in dbs[2].scan("acct")] == [70, 30]


def test_a_malformed_idempotency_key_is_refused_and_changes_nothing(cluster: Cluster) -> None:
    """An over-long key gets INVALID_ARGUMENT; a key inside a transaction's write too."""
    db = connect(cluster.addresses)
    db.create_table("t", {"k": "int64"}, primary_key="k")
    with pytest.raises(grpc.RpcError) as e:
        db.insert("t", {"k": 1}, idempotency_key="x" * 300)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    rows = rpc.RowServiceStub(grpc.insecure_channel(cluster[0].address))
    txn = rpc.TransactionServiceStub(grpc.insecure_channel(cluster[0].address)).Begin(
        api.BeginRequest(), timeout=10)
    with pytest.raises(grpc.RpcError) as e:
        rows.Insert(api.WriteRowsRequest(
            table="t", rows=[pb.Row(columns={"k": pb.Value(int_value=2)})],
            transaction_id=txn.transaction_id, idempotency_key="k"), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(db.scan("t")) == []
