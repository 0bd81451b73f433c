"""Exactly-once writes: a retry with the same idempotency key, on any node, applies nothing."""

from __future__ import annotations

import signal

import grpc
import pytest

from nodes import faultpoints
from shardless import (
    Condition,
    Mutation,
    Transaction,
    certainly_not_applied,
    connect,
    error_reason,
    to_row,
)
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from shardless.v1 import types_pb2 as pb
from tests.harness.cluster import Cluster, wait_for

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


def test_a_commit_whose_reply_dies_with_its_node_is_applied_once_when_retried_elsewhere(
        cluster: Cluster) -> None:
    """Two extra nodes kill themselves (SIGKILL) right after the commit carrying a given key is
    durable, before replying: the client sees UNAVAILABLE, the commit stands, and the same
    transaction or write retried on another node with the same key returns the first result
    and applies nothing more."""
    crash_txn = cluster.add_node(env={faultpoints.ENV: "crash-after-commit=transfer-1"})
    crash_write = cluster.add_node(env={faultpoints.ENV: "crash-after-commit=insert-1"})
    db = connect([cluster[0].address], attempts=1, refresh_s=None)
    db.create_table("acct", {"id": "int64", "bal": "int64"}, primary_key="id")
    db.insert("acct", [{"id": 1, "bal": 100}, {"id": 2, "bal": 0}])

    def transfer(t: Transaction) -> None:
        a = t.get("acct", 1, for_update=True)
        b = t.get("acct", 2, for_update=True)
        t.update("acct", [{"id": 1, "bal": a["bal"] - 30}, {"id": 2, "bal": b["bal"] + 30}])

    with connect([crash_txn.address], attempts=1, refresh_s=None) as doomed:
        t = doomed.begin()
        transfer(t)
        with pytest.raises(grpc.RpcError) as lost:
            t.commit(idempotency_key="transfer-1")
        assert lost.value.code() == grpc.StatusCode.UNAVAILABLE, lost.value
        assert not certainly_not_applied(lost.value), "a lost reply was called certain"
    wait_for(lambda: not crash_txn.is_alive, 10, message="the node to die after its commit")
    assert crash_txn.returncode == -signal.SIGKILL
    assert [r["bal"] for r in db.scan("acct")] == [70, 30], "the durable commit was lost"
    # Retried elsewhere: the dead node's row locks are freed, and nothing is applied again;
    # the commit names the transaction that applied the key.
    again = db.begin()
    transfer(again)
    again.commit(idempotency_key="transfer-1")
    assert again.replayed and again.committed_by == t.id
    db.run_transaction(transfer, idempotency_key="transfer-1")
    db.run_transaction(transfer, idempotency_key="transfer-1")
    assert [r["bal"] for r in db.scan("acct")] == [70, 30], "the retry applied again"

    with connect([crash_write.address], attempts=1, refresh_s=None) as doomed:
        with pytest.raises(grpc.RpcError) as lost:
            doomed.insert("acct", {"id": 3, "bal": 5}, idempotency_key="insert-1")
        assert lost.value.code() == grpc.StatusCode.UNAVAILABLE, lost.value
        assert not certainly_not_applied(lost.value), "a lost reply was called certain"
    wait_for(lambda: not crash_write.is_alive, 10, message="the node to die after its commit")
    first = db.get("acct", 3)
    assert first is not None and first["bal"] == 5
    # Without the key the retry would fail with ALREADY_EXISTS; with it, it returns the first
    # result; a different value sent under the same key is refused (the key is another
    # request's), and applied no more than the retry.
    rows = rpc.RowServiceStub(db.channel)
    retried = rows.Insert(api.WriteRowsRequest(
        table="acct", rows=[to_row({"id": 3, "bal": 5})], idempotency_key="insert-1"),
        timeout=10)
    assert retried.replayed and retried.commit_position > 0
    with pytest.raises(grpc.RpcError) as reused:
        rows.Insert(api.WriteRowsRequest(
            table="acct", rows=[to_row({"id": 3, "bal": 6})], idempotency_key="insert-1"),
            timeout=10)
    assert reused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, reused.value
    assert "first used for a different request" in (reused.value.details() or "")
    assert db.get("acct", 3)["bal"] == 5
    # And the client can ask what became of the key.
    got = rpc.TransactionServiceStub(db.channel).GetOutcome(
        api.GetOutcomeRequest(idempotency_key="insert-1"), timeout=10)
    assert got.state == api.GetOutcomeResponse.APPLIED
    assert (got.commit_position, got.rows_affected) == (retried.commit_position, 1)
    assert len(list(db.scan("acct"))) == 3
    db.close()


def test_get_outcome_tells_applied_failed_and_unknown_and_settles_a_late_write(
        cluster: Cluster) -> None:
    """GetOutcome on any node: a key that applied (APPLIED, its position), one whose write
    failed its condition (FAILED, the code and message, and a retry gets the same refusal even
    once the condition would hold), one never seen (UNKNOWN, then ABANDONED when settled, after
    which the write sent with it is refused and applies nothing)."""
    a, b = (grpc.insecure_channel(cluster[i].address) for i in (0, 1))
    connect(cluster.addresses).create_table("t", {"k": "int64", "v": "string"},
                                            primary_key="k")
    rows_a, txns_b = rpc.RowServiceStub(a), rpc.TransactionServiceStub(b)
    states = api.GetOutcomeResponse

    def outcome(key: str, settle: bool = False) -> api.GetOutcomeResponse:
        return txns_b.GetOutcome(api.GetOutcomeRequest(idempotency_key=key, settle=settle),
                                 timeout=10)

    first = rows_a.Upsert(api.WriteRowsRequest(
        table="t", rows=[to_row({"k": 1, "v": "a"})], idempotency_key="w-1"), timeout=10)
    got = outcome("w-1")
    assert (got.state, got.commit_position, got.rows_affected) == (
        states.APPLIED, first.commit_position, 1)

    # An update of a missing row, by expected version: refused for what the data held.
    update = api.WriteRequest(mutations=[pb.Mutation(
        kind=pb.Mutation.UPDATE, table="t", row=to_row({"k": 2, "v": "b"}))],
        idempotency_key="w-2")
    with pytest.raises(grpc.RpcError) as e:
        rows_a.Write(update, timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    got = outcome("w-2")
    assert (got.state, got.failure_code) == (states.FAILED, "NOT_FOUND")
    assert got.failure_message
    rows_a.Upsert(api.WriteRowsRequest(table="t", rows=[to_row({"k": 2, "v": "z"})]),
                  timeout=10)
    with pytest.raises(grpc.RpcError) as e:  # the row exists now, but the key's answer stands
        rows_a.Write(update, timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "the first attempt with idempotency key 'w-2'" in (e.value.details() or "")
    assert connect([cluster[0].address]).get("t", 2)["v"] == "z"

    assert outcome("w-3").state == states.UNKNOWN
    assert outcome("w-3", settle=True).state == states.ABANDONED
    with pytest.raises(grpc.RpcError) as e:
        rows_a.Upsert(api.WriteRowsRequest(
            table="t", rows=[to_row({"k": 3, "v": "late"})], idempotency_key="w-3"),
            timeout=10)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(e.value) == "KEY_ABANDONED"
    assert "settled as abandoned" in (e.value.details() or "")
    assert connect([cluster[0].address]).get("t", 3) is None
    assert outcome("w-3").state == states.ABANDONED
    with pytest.raises(grpc.RpcError) as e:
        outcome("")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    a.close()
    b.close()
