"""The cluster over a three-member etcd: losing one member changes nothing for clients; losing
quorum makes everything that needs a lock fail fast with UNAVAILABLE, while snapshot reads and
one-shot writes that meet no lock go on (they need no etcd: ``lockmgr/DESIGN.md``), and
everything resumes when quorum returns."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from shardless import certainly_not_applied, connect
from tests.harness.cluster import Cluster, wait_for
from tests.harness.etcd import EtcdCluster

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.timeout(180)]


def _etcd(cluster: Cluster) -> EtcdCluster:
    assert isinstance(cluster.etcd, EtcdCluster)
    return cluster.etcd


def _sessions(cluster: Cluster) -> dict[str, str]:
    with connect(cluster.addresses, refresh_s=None) as db:
        return {m.node_id: m.session for m in db.status().members}


def test_losing_one_etcd_member_changes_nothing_for_clients(cluster3: Cluster) -> None:
    """Helper clients write and read through all three nodes while each etcd member in turn is
    killed for a few seconds and restarted: no client call fails, every acknowledged write is
    there exactly once, and all three nodes are members at the end. (A node may have renewed its
    session: when the member killed is etcd's leader, the election can outlast the node's
    self-fencing deadline on a loaded machine; that is safe, and clients must not notice.)"""
    etcd = _etcd(cluster3)
    db = connect(cluster3.addresses, refresh_s=None)
    db.create_table("kv", {"id": "int64", "w": "int64"}, primary_key="id")
    db.create_table("ctr", {"id": "int64", "n": "int64"}, primary_key="id")
    db.insert("ctr", [{"id": i, "n": 0} for i in range(4)])
    acked: list[list[int]] = [[] for _ in range(4)]
    increments = [0] * 4
    errors: list[str] = []
    stop = threading.Event()

    def work(i: int) -> None:
        try:
            with connect(cluster3.addresses, timeout_s=10, refresh_s=None) as c:
                seq = 0
                while not stop.is_set():
                    seq += 1
                    try:
                        c.insert("kv", {"id": i * 1_000_000 + seq, "w": i})
                        acked[i].append(i * 1_000_000 + seq)

                        def incr(t, i=i):  # type: ignore[no-untyped-def]
                            row = t.get("ctr", i, for_update=True)
                            t.update("ctr", {"id": i, "n": row["n"] + 1})

                        c.run_transaction(incr)
                        increments[i] += 1
                    except grpc.RpcError as e:
                        errors.append(f"client {i}: {e.code().name}: {e.details()}")
        except BaseException as e:  # reported by the test: a dead client proves nothing
            errors.append(f"client {i}: {e!r}")

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(4)]
    try:
        for t in threads:
            t.start()
        for m in range(3):
            done = sum(increments)
            etcd.kill(m)
            wait_for(lambda done=done: sum(increments) >= done + 20, 30,
                     message=f"progress with etcd member {m + 1} down")
            time.sleep(1.0)
            etcd.restart(m)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not [t for t in threads if t.is_alive()], "a client did not finish"
    assert not errors, errors[:10]
    rows = {r["id"] for r in db.scan("kv")}
    assert rows == {x for xs in acked for x in xs}
    assert {r["id"]: r["n"] for r in db.scan("ctr")} == dict(enumerate(increments))
    wait_for(lambda: len(_sessions(cluster3)) == 3, 15, message="all three nodes as members")
    db.close()


def test_without_etcd_quorum_locks_fail_fast_and_lock_free_work_goes_on(
        cluster3: Cluster) -> None:
    """With two of three etcd members killed: a locking read, and a one-shot write to a row an
    open transaction holds, end with UNAVAILABLE (nothing applied) well before their deadline;
    point reads, scans, read-only transactions and one-shot writes that meet no lock still
    work, on every node. When quorum returns, locking writes succeed again on every node, and
    every write acknowledged meanwhile is there."""
    etcd = _etcd(cluster3)
    db = connect(cluster3.addresses, refresh_s=None)
    db.create_table("kv", {"id": "int64", "v": "string"}, primary_key="id")
    db.insert("kv", [{"id": i, "v": f"before-{i}"} for i in range(20)])
    pinned = [connect([a], timeout_s=8, attempts=1, refresh_s=None) for a in cluster3.addresses]
    holder = pinned[0].begin()
    assert holder.get("kv", 19, for_update=True)["v"] == "before-19"  # X on row 19, published
    gone = etcd.lose_quorum()
    try:
        for k, c in enumerate(pinned):
            c.insert("kv", {"id": 100 + k, "v": "during"})  # meets no lock: needs no etcd
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as failed:
                c.upsert("kv", {"id": 19, "v": "during"})  # must wait for the holder's lock
            took = time.monotonic() - started
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value
            assert certainly_not_applied(failed.value), failed.value
            assert took < 4.0, f"a locked write took {took:.1f}s to fail (deadline 8 s)"
            t = c.begin()
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as failed:
                t.get("kv", 1, for_update=True)
            took = time.monotonic() - started
            assert failed.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                           grpc.StatusCode.ABORTED), failed.value
            assert took < 4.0, f"a locking read took {took:.1f}s to fail"
            # Snapshot reads need no etcd.
            assert c.get("kv", 3)["v"] == "before-3"
            assert [r["id"] for r in c.scan("kv", 0, 9)] == list(range(10))
            with c.begin(read_only=True) as ro:
                assert ro.get("kv", 7)["v"] == "before-7"
        time.sleep(4.0)  # past the session TTL (3 s): sessions are gone, reads still answer
        assert all(c.get("kv", 5)["v"] == "before-5" for c in pinned)
    finally:
        etcd.regain_quorum(gone)
    for k, c in enumerate(pinned):
        wait_for(lambda c=c, k=k: _try_locked_write(c, 200 + k), 30,
                 message=f"locking writes to resume on node {k + 1}")
    rows = {r["id"]: r["v"] for r in db.scan("kv")}
    assert {i: f"before-{i}" for i in range(20)}.items() <= rows.items()  # 19 was refused
    assert {rows[100 + k] for k in range(3)} == {"during"}
    assert {200, 201, 202} <= rows.keys()
    for c in [*pinned, db]:
        c.close()


def _try_locked_write(c, key: int) -> bool:  # type: ignore[no-untyped-def]
    """A write inside an interactive transaction (it takes locks through etcd)."""
    try:
        with c.begin() as t:
            t.upsert("kv", {"id": key, "v": "after"})
        return True
    except grpc.RpcError:
        return False
