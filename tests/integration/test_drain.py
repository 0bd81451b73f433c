"""A node leaves a running cluster (``shardless drain`` or SIGTERM) without a failed client
call: new work goes elsewhere, open transactions finish (or are handed back with
NODE_DRAINING after the grace period), the member list and the clients' view drop it."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time

import grpc
import pytest

from shardless import abort_reason, connect
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as api_grpc
from tests.harness.calls import in_thread, join
from tests.harness.cluster import Cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _drain(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``shardless drain ARGS`` as a user would."""
    return subprocess.run([sys.executable, "-m", "nodes", "drain", *args], capture_output=True,
                          text=True, timeout=timeout_s, check=False)


def _members(cluster: Cluster, via: str) -> set[str]:
    with connect([via], refresh_s=None) as db:
        return {m.address for m in db.status().members}


def test_drain_under_load_fails_no_client_call(cluster: Cluster) -> None:
    """Six helper clients insert, read, scan and increment through run_transaction over all
    three nodes while node 1 is drained with ``shardless drain ADDRESS``; a transaction open on
    node 1 commits after the drain began. Not one client call fails; every acknowledged write
    is there exactly once; node 1 exits 0 and leaves the member list and every client's view."""
    leaving = cluster[1]
    staying = [cluster[0].address, cluster[2].address]
    db = connect(cluster.addresses, refresh_s=None)
    db.create_table("kv", {"id": "int64", "w": "int64"}, primary_key="id")
    db.create_table("ctr", {"id": "int64", "n": "int64"}, primary_key="id")
    n_clients = 6
    db.insert("ctr", [{"id": i, "n": 0} for i in range(n_clients)])
    pinned = connect([leaving.address], refresh_s=None)
    long_txn = pinned.begin()
    assert long_txn.address == leaving.address
    long_txn.insert("kv", {"id": -1, "w": -1})

    inserted: list[list[int]] = [[] for _ in range(n_clients)]
    increments = [0] * n_clients
    calls = [0] * n_clients
    errors: list[str] = []
    stop = threading.Event()
    clients = [connect(cluster.addresses, timeout_s=10, refresh_s=0.3)
               for _ in range(n_clients)]

    def work(i: int) -> None:
        db_i, rng, seq = clients[i], random.Random(i), 0
        while not stop.is_set():
            try:
                seq += 1
                row_id = i * 1_000_000 + seq
                db_i.insert("kv", {"id": row_id, "w": i})
                inserted[i].append(row_id)
                probe = rng.choice(inserted[i])
                if db_i.get("kv", probe) is None:
                    errors.append(f"client {i}: acknowledged row {probe} not found")

                def incr(t, i=i):  # type: ignore[no-untyped-def]
                    row = t.get("ctr", i, for_update=True)
                    t.update("ctr", {"id": i, "n": row["n"] + 1})

                db_i.run_transaction(incr)
                increments[i] += 1
                if seq % 5 == 0:
                    mine = [r["id"] for r in db_i.scan("kv", i * 1_000_000, row_id)]
                    if mine != inserted[i]:
                        errors.append(f"client {i}: scan saw {len(mine)} of "
                                      f"{len(inserted[i])} rows")
                calls[i] += 1
            except grpc.RpcError as e:
                errors.append(f"client {i}: {e.code().name}: {e.details()}")
            except Exception as e:  # reported by the test
                errors.append(f"client {i}: {e!r}")

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n_clients)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: sum(calls) >= 30, 30, message="load before the drain")
        drainer, drain = in_thread(_drain, leaving.address)
        wait_for(lambda: leaving.address not in _members(cluster, staying[0]), 10,
                 message="node 1 to leave the member list")
        # The drain has begun; a transaction open on node 1 may still finish there.
        long_txn.commit()
        drained: subprocess.CompletedProcess[str] = join(drainer, drain, 60,
                                                         "shardless drain").result
        before = sum(calls)
        wait_for(lambda: sum(calls) >= before + 30, 30, message="load after the drain")
        wait_for(lambda: all(leaving.address not in c.addresses for c in clients), 10,
                 message="every client to drop node 1's address")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        for c in [*clients, pinned, db]:
            c.close()
    assert not [t for t in threads if t.is_alive()], "a client did not finish"
    assert drained.returncode == 0, drained
    assert "has left" in drained.stdout, drained.stdout
    wait_for(lambda: not leaving.is_alive, 10, message="node 1's process to exit")
    assert leaving.returncode == 0
    assert not errors, errors[:10]
    with connect(staying, refresh_s=None) as check:
        rows = {r["id"] for r in check.scan("kv")}
        counters = {r["id"]: r["n"] for r in check.scan("ctr")}
        assert {m.address for m in check.status().members} == set(staying)
    acked = {row_id for ids in inserted for row_id in ids}
    assert rows == acked | {-1}, (sorted(acked - rows)[:10], sorted(rows - acked - {-1})[:10])
    assert counters == dict(enumerate(increments))


def test_drain_hands_back_what_does_not_finish_in_its_grace(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """With --grace 3, a transaction left open on the node drained (``shardless drain ID
    --via``) keeps working until the grace ends (the grace leaves room for the drain command's
    own exit on a loaded machine), then gets ABORTED NODE_DRAINING and leaves
    nothing behind. A Drain meant for another node is refused with FAILED_PRECONDITION, and
    an unknown id makes the command exit 1."""
    cluster = make_cluster("--grace", "3")
    leaving, other = cluster[0], cluster[2]
    db = connect([other.address], refresh_s=None, attempts=1)
    db.create_table("t", {"k": "int64"}, primary_key="k")
    stub = api_grpc.ClusterServiceStub(db.channel)
    with pytest.raises(grpc.RpcError) as refused:
        stub.Drain(api.DrainRequest(node_id=leaving.node_id), timeout=5)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert abort_reason(refused.value) == "WRONG_NODE"
    assert leaving.node_id in (refused.value.details() or "")
    unknown = _drain("no-such-node", "--via", other.address)
    assert unknown.returncode == 1 and "no-such-node" in unknown.stderr, unknown

    with connect([leaving.address], refresh_s=None, attempts=1) as pinned:
        txn = pinned.begin()
        txn.insert("t", {"k": 1})
        drained = _drain(leaving.node_id, "--via", other.address, "--wait", "0")
        assert drained.returncode == 0, drained
        assert "1 open transaction(s)" in drained.stdout, drained.stdout
        started = time.monotonic()
        worked = 0
        while True:
            try:
                txn.get("t", 1)
                worked += 1
            except grpc.RpcError as e:
                took = time.monotonic() - started
                assert e.code() == grpc.StatusCode.ABORTED, (e.code(), e.details())
                assert abort_reason(e) == "NODE_DRAINING", e.details()
                break
            assert time.monotonic() - started < 10, "the transaction was never handed back"
            time.sleep(0.05)
        assert worked >= 5, "calls of the open transaction were refused during the grace"
        assert 1.0 <= took < 8, took
        txn.done = True
    wait_for(lambda: not leaving.is_alive, 15, message="the drained node to exit")
    assert leaving.returncode == 0
    assert db.get("t", 1) is None
    assert _members(cluster, other.address) == {cluster[1].address, other.address}
    db.close()
