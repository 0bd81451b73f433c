"""Failover as clients of the helper see it: kill -9 under load, the leader's death, a node
joining. Nothing acknowledged is lost, nothing is applied twice, clients carry on."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from shardless import connect
from tests.harness.cluster import Cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.fault]


def test_kill9_under_transaction_load_loses_and_doubles_nothing(cluster: Cluster) -> None:
    """Clients increment their own counters through run_transaction (retried with one
    idempotency key per increment) while a node is killed: every counter equals the increments
    acknowledged to its client, so none was lost or applied twice."""
    db0 = connect(cluster.addresses)
    db0.create_table("ctr", {"id": "int64", "n": "int64"}, primary_key="id")
    n_clients = 6
    db0.insert("ctr", [{"id": i, "n": 0} for i in range(n_clients)])
    acked = [0] * n_clients
    errors: list[BaseException] = []
    stop = threading.Event()
    killed = threading.Event()
    after_kill = [0]

    def client(i: int) -> None:
        db = connect(cluster.addresses, timeout_s=5)
        try:
            while not stop.is_set():
                def incr(t, i=i):  # type: ignore[no-untyped-def]
                    row = t.get("ctr", i, for_update=True)
                    t.update("ctr", {"id": i, "n": row["n"] + 1})
                db.run_transaction(incr)
                acked[i] += 1
                if killed.is_set():
                    after_kill[0] += 1
        except BaseException as e:
            errors.append(e)
        finally:
            db.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: sum(acked) > 60, 30, message="increments before the kill")
        cluster[1].kill9()
        killed.set()
        wait_for(lambda: after_kill[0] > 60, 30, message="increments after the kill")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors
    with connect([cluster[0].address]) as db:
        final = {r["id"]: r["n"] for r in db.scan("ctr")}
    assert final == dict(enumerate(acked)), (final, acked)


def test_kill9_of_the_leader_elects_a_new_one_within_a_second(cluster: Cluster) -> None:
    """The leader dies: another node leads within one second and runs its duties."""
    db = connect(cluster.addresses, refresh_s=None)
    leader = wait_for(lambda: db.status().leader, 10, message="a leader")
    victim = cluster.node(leader)
    killed_at = time.monotonic()
    victim.kill9()
    new = wait_for(lambda: (lambda s: s.leader not in ("", leader) and s.leader)(db.status()),
                   5, interval_s=0.02, retry_on=(grpc.RpcError,), message="a new leader")
    elapsed = time.monotonic() - killed_at
    assert elapsed < 1.0, elapsed
    activity = wait_for(lambda: (lambda s: s.leader == new and "cycle" in s.leader_activity
                                 and s.leader_activity)(db.status()), 5,
                        retry_on=(grpc.RpcError,), message="the new leader's duties")
    assert "fenced" in activity
    db.close()


def test_a_node_that_joins_later_serves_and_clients_start_using_it(cluster: Cluster) -> None:
    """A fourth node joins a running cluster; the helper's member refresh adds it."""
    db = connect(cluster.addresses, refresh_s=0.2)
    db.create_table("t", {"k": "int64"}, primary_key="k")
    node = cluster.add_node()
    wait_for(lambda: node.address in db.addresses, 10, message="the client to see the new node")
    with connect([node.address], refresh_s=None) as direct:
        direct.insert("t", {"k": 1})
        assert direct.get("t", 1) is not None
    for k in range(2, 30):
        db.insert("t", {"k": k})
    assert len(list(db.scan("t"))) == 29
    db.close()
