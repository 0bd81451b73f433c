"""One-shot writes without lock entries, against real nodes, etcd and one volume.

What these tests pin down (``lockmgr/DESIGN.md``, "One-shot writes without lock entries"):

* A one-shot write that meets no lock commits without putting any lock entry in etcd (the
  node's ``lock_free_writes`` counter says so, and etcd saw no lock entry).
* A one-shot write to a row that an interactive transaction on another node holds (X, or S by
  a plain locking read) does not go around it: it waits in the lock queue and commits after the
  holder, and it reads what the holder wrote.
* Under concurrency from every node, interactive read-modify-write increments and lock-free
  compare-and-set increments of the same counters lose no update: a broken publication of
  grants (a one-shot write slipping between an interactive transaction's read and its commit)
  shows up as a final count below the number of acknowledged increments.
"""

from __future__ import annotations

import random
import threading
import time

import grpc
import pytest

from shardless import Condition, Mutation, connect
from shardless.client import Client
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from tests.harness.calls import in_thread, join
from tests.harness.cluster import Cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _counters(address: str) -> dict[str, int]:
    with grpc.insecure_channel(address) as ch:
        st = rpc.ClusterServiceStub(ch).Status(api.StatusRequest(local_only=True), timeout=5)
    return dict(st.counters)


def _total(cluster: Cluster, name: str) -> int:
    return sum(_counters(a).get(name, 0) for a in cluster.addresses)


def test_a_one_shot_write_that_meets_no_lock_puts_no_lock_entry(cluster: Cluster) -> None:
    """Fifty one-shot upserts through every node commit lock-free: the counters count them,
    none was refused, and no lock entry was ever left in etcd."""
    db = connect(cluster.addresses)
    db.create_table("kv", {"id": "int64", "v": "string"}, primary_key="id")
    before = _total(cluster, "lock_free_writes")
    for i in range(50):
        db.upsert("kv", {"id": i, "v": f"v{i}"})
    assert _total(cluster, "lock_free_writes") - before == 50
    assert _total(cluster, "lock_free_refused") == 0
    assert not db.status().locks
    assert {r["id"]: r["v"] for r in db.scan("kv")} == {i: f"v{i}" for i in range(50)}
    db.close()


@pytest.mark.parametrize("for_update", [True, False], ids=["held-x", "held-s"])
def test_a_one_shot_write_to_a_held_row_waits_for_the_holder(cluster: Cluster,
                                                              for_update: bool) -> None:
    """An interactive transaction on node 1 reads row 1 (X with for_update, else S); a one-shot
    write of row 1 through node 2 is sent to the lock queue and waits until the holder commits,
    then commits after it. Holding X, the holder writes row 1 and the waiting write's condition
    (row 1 = 1) sees that; holding S, the holder writes row 2 only (writing row 1 would be an
    upgrade queued behind the waiter: a deadlock)."""
    admin = connect(cluster.addresses)
    admin.create_table("kv", {"id": "int64", "v": "int64"}, primary_key="id")
    admin.insert("kv", [{"id": 1, "v": 0}, {"id": 2, "v": 0}])
    holder_db = connect([cluster.addresses[0]], timeout_s=20)
    writer = connect([cluster.addresses[1]], timeout_s=20, attempts=1)
    refused_before = _total(cluster, "lock_free_refused")
    expect = [Condition.column_equals("kv", 1, "v", 1)] if for_update else []
    t = holder_db.begin()
    try:
        assert t.get("kv", 1, for_update=for_update)["v"] == 0
        thread, call = in_thread(lambda: writer.execute(
            conditions=expect, writes=[Mutation.upsert("kv", {"id": 1, "v": 100})]
        ).commit_position)
        wait_for(lambda: _total(cluster, "lock_free_refused") > refused_before, 10,
                 message="the one-shot write to be sent to the lock queue")
        time.sleep(0.5)
        assert not call.done.is_set(), f"the write went around the lock: {call.describe()}"
        if for_update:
            t.upsert("kv", {"id": 1, "v": 1})
        t.upsert("kv", {"id": 2, "v": 1})
        holder_pos = t.commit()
    except BaseException:
        t.rollback()
        raise
    done = join(thread, call, 20, "the waiting one-shot write")
    assert done.error is None, done.describe()
    assert done.result > holder_pos
    assert admin.get("kv", 1)["v"] == 100 and admin.get("kv", 2)["v"] == 1
    for c in (admin, holder_db, writer):
        c.close()


def test_interactive_and_lock_free_increments_lose_no_update(cluster: Cluster) -> None:
    """Six threads over three nodes increment four counters, half by interactive
    read-for-update-then-write transactions, half by one-shot compare-and-set writes (read,
    then upsert with the expected version, which go lock-free when no lock is in the way):
    every counter ends at exactly the number of acknowledged increments."""
    admin = connect(cluster.addresses)
    admin.create_table("ctr", {"id": "int64", "n": "int64"}, primary_key="id")
    admin.insert("ctr", [{"id": i, "n": 0} for i in range(4)])
    clients = [connect([a], timeout_s=20) for a in cluster.addresses]
    acked = [0] * 4
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + 12

    def interactive(db: Client, rng: random.Random) -> None:
        k = rng.randrange(4)

        def body(t):  # type: ignore[no-untyped-def]
            row = t.get("ctr", k, for_update=True)
            time.sleep(rng.random() * 0.005)  # widen the window a lock-free write would use
            t.update("ctr", {"id": k, "n": row["n"] + 1})

        db.run_transaction(body)
        with lock:
            acked[k] += 1

    def lock_free(db: Client, rng: random.Random) -> None:
        k = rng.randrange(4)
        row = db.get("ctr", k)
        try:
            db.write([Mutation.upsert("ctr", {"id": k, "n": row["n"] + 1},
                                      expected_version=row.version)])
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            return  # lost the race on the version: nothing written
        with lock:
            acked[k] += 1

    def worker(w: int) -> None:
        rng = random.Random(w)
        db = clients[w % 3]
        try:
            while time.monotonic() < stop:
                (interactive if w % 2 else lock_free)(db, rng)
        except Exception as e:  # recorded; the test fails on it below
            errors.append(f"worker {w}: {e!r}")

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(40)
    assert not any(th.is_alive() for th in threads), "workers did not stop"
    assert not errors, errors
    final = {r["id"]: r["n"] for r in admin.scan("ctr")}
    assert final == dict(enumerate(acked)), (final, acked)
    assert _total(cluster, "lock_free_writes") > 0
    assert _total(cluster, "lock_free_refused") > 0, "no write ever met a published grant"
    for c in [admin, *clients]:
        c.close()
