"""A node of several processes (``shardless node --processes 2``; ``nodes/workers.py``), with
real etcd, real processes and real gRPC.

What these tests pin down:

* every worker serves the node's one address: fresh connections to it reach both, and the
  members show each worker under its node;
* an interactive transaction begun through the node's address is bound to one worker, and the
  helper follows it there;
* a worker killed with SIGKILL is replaced by the supervisor (a new process, a new session),
  and the node keeps answering meanwhile;
* ``kill -9`` of the node's process (the supervisor) takes every worker with it at once, and
  their sessions go: the other node carries on alone;
* draining the node through its address makes every worker leave, and the supervisor exits 0.
"""

from __future__ import annotations

import os
import signal

import grpc
import pytest

from nodes.workers import worker_id
from shardless import connect
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from tests.harness.cluster import Cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _workers(db, node_id: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {m.node_id: m.pid for m in db.status().members if m.group == node_id}


def _commits(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        st = rpc.ClusterServiceStub(ch).Status(api.StatusRequest(local_only=True), timeout=5)
    return int(st.counters["commits"])


@pytest.fixture
def cluster2(make_cluster) -> Cluster:  # type: ignore[no-untyped-def]
    return make_cluster("--processes", "2", n=2)


def test_both_workers_serve_the_nodes_address_and_transactions_follow_theirs(
        cluster2: Cluster) -> None:
    """Fresh connections to node 1's address land on both of its workers (each commits some of
    forty writes); the members list the workers under their node with the node's address; an
    interactive transaction begun there runs on one worker and commits."""
    db = connect(cluster2.addresses)
    node = cluster2[0]
    wait_for(lambda: len(_workers(db, node.node_id)) == 2, 20, message="both workers")
    members = [m for m in db.status().members if m.group == node.node_id]
    assert {m.node_id for m in members} == {worker_id(node.node_id, 0),
                                           worker_id(node.node_id, 1)}
    assert {m.public_address for m in members} == {node.address}
    assert len({m.address for m in members}) == 2 and len({m.pid for m in members}) == 2
    db.create_table("t", {"id": "int64", "v": "int64"}, primary_key="id")
    before = {m.node_id: _commits(m.address) for m in members}
    for i in range(40):
        with connect([node.address], refresh_s=None) as fresh:
            fresh.upsert("t", {"id": i, "v": i})
    gained = {m.node_id: _commits(m.address) - before[m.node_id] for m in members}
    assert all(n > 0 for n in gained.values()), f"one worker got no connection: {gained}"
    with connect([node.address], refresh_s=None) as one:
        t = one.begin()
        t.update("t", {"id": 1, "v": t.get("t", 1, for_update=True)["v"] + 100})
        assert t.node_id.startswith(node.node_id + ".w")
        t.commit()
    assert db.get("t", 1)["v"] == 101
    db.close()


def test_a_killed_worker_is_replaced_and_the_node_keeps_answering(cluster2: Cluster) -> None:
    """SIGKILL one worker of node 1: writes through node 1's address keep succeeding (the
    helper retries on the other worker), and a new worker process joins under the node."""
    db = connect(cluster2.addresses)
    node = cluster2[0]
    wait_for(lambda: len(_workers(db, node.node_id)) == 2, 20, message="both workers")
    db.create_table("t", {"id": "int64"}, primary_key="id")
    victim_id, victim_pid = sorted(_workers(db, node.node_id).items())[0]
    os.kill(victim_pid, signal.SIGKILL)
    with connect([node.address], refresh_s=None) as one:
        for i in range(20):
            one.upsert("t", {"id": i})
    wait_for(lambda: _workers(db, node.node_id).get(victim_id) not in (None, victim_pid), 20,
             message="the replacement worker")
    assert not _alive(victim_pid)
    assert len(list(db.scan("t"))) == 20
    db.close()


def test_kill9_of_the_node_takes_every_worker_with_it(cluster2: Cluster) -> None:
    """kill -9 of node 1's supervisor: both its workers are gone within a second or two, their
    members leave, and the other node still serves reads and writes."""
    db = connect([cluster2.addresses[1]], refresh_s=None)
    node = cluster2[0]
    wait_for(lambda: len(_workers(db, node.node_id)) == 2, 20, message="both workers")
    db.create_table("t", {"id": "int64"}, primary_key="id")
    pids = list(_workers(db, node.node_id).values())
    node.kill9()
    wait_for(lambda: not any(_alive(p) for p in pids), 5, message="the workers to die")
    wait_for(lambda: not _workers(db, node.node_id), 10, message="their members to leave")
    db.insert("t", {"id": 1})
    assert db.get("t", 1) is not None
    db.close()


def test_a_drain_of_the_nodes_address_makes_every_worker_leave(cluster2: Cluster) -> None:
    """Drain sent to node 1's address (no node id): every worker leaves, the supervisor exits
    with 0, and the other node is untouched."""
    db = connect([cluster2.addresses[1]], refresh_s=None)
    node = cluster2[0]
    wait_for(lambda: len(_workers(db, node.node_id)) == 2, 20, message="both workers")
    with grpc.insecure_channel(node.address) as ch:
        resp = rpc.ClusterServiceStub(ch).Drain(api.DrainRequest(), timeout=10)
    assert resp.node_id == node.node_id
    assert node.wait(30) == 0
    assert not _workers(db, node.node_id)
    assert {m.group for m in db.status().members} == {cluster2[1].node_id}
    db.close()
