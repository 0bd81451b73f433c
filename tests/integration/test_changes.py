"""The change stream on real nodes: what a consumer gets, once each and in order, across node
deaths and its own restarts; and the holds that keep the commit log for it."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from nodes.up import node_env
from shardless import connect
from shardless.client import ChangeEvent
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from tests.harness.cluster import Cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def take(watch: Any, n: int, timeout_s: float = 30) -> list[ChangeEvent]:
    """The next ``n`` changes of a watch (in a thread, so a hang fails the test)."""
    out: list[ChangeEvent] = []
    done = threading.Event()

    def run() -> None:
        try:
            for c in watch:
                out.append(c)
                if len(out) >= n:
                    break
        finally:
            done.set()
    threading.Thread(target=run, daemon=True).start()
    assert done.wait(timeout_s), f"got {len(out)} of {n} changes: {out[-3:]}"
    return out


def test_a_watch_delivers_each_change_with_its_image_in_commit_order(cluster: Cluster) -> None:
    db = connect(cluster.addresses, refresh_s=None)
    db.create_table("acct", {"id": "int64", "owner": "string", "n": "int64"}, primary_key="id")
    db.create_table("other", {"id": "int64"}, primary_key="id")
    watch = db.watch("acct", from_now=True)
    ranged = db.watch("acct", start=10, end=19, from_now=True)
    p1 = db.upsert("acct", [{"id": 1, "owner": "ada", "n": 5}, {"id": 12, "owner": "bo", "n": 1}])
    db.upsert("other", {"id": 1})  # another table: not delivered
    with db.begin() as t:
        t.update("acct", {"id": 1, "owner": "ada", "n": 6})
        t.delete("acct", [12])
    p3 = db.upsert("acct", {"id": 13, "owner": "cy", "n": 0})
    got = take(watch, 5)
    assert [(c.kind, c.key) for c in got] == [("put", (1,)), ("put", (12,)), ("put", (1,)),
                                              ("delete", (12,)), ("put", (13,))]
    assert got[0].position == got[1].position == p1 and got[-1].position == p3
    assert got[2].position == got[3].position < p3
    assert got[2].row is not None and got[2].row["n"] == 6 and got[2].row.version == got[2].position
    places = [(c.position, c.index) for c in got]
    assert places == sorted(set(places))
    # The key range [10, 19]; and a watch from the start begins with the table's creation.
    assert [(c.kind, c.key) for c in take(ranged, 3)] == [("put", (12,)), ("delete", (12,)),
                                                          ("put", (13,))]
    first = take(db.watch("acct"), 1)[0]
    assert first.kind == "create_table" and first.table == "acct"
    # The raw stream: at most max_changes a message, commits split between messages, and a
    # start in the middle of a commit.
    stub = rpc.ChangeServiceStub(grpc.insecure_channel(cluster.addresses[0]))
    call, raw = stub.Watch(api.WatchRequest(table="acct", max_changes=1), timeout=10), []
    for m in call:
        assert len(m.changes) <= 1 and m.last_position >= m.oldest_position > 0
        raw.extend(m.changes)
        if len(raw) == 6:
            break
    call.cancel()
    assert raw[0].kind == api.Change.CREATE_TABLE and raw[0].schema.name == "acct"
    assert [(c.position, c.index) for c in raw[1:]] == places
    assert raw[3].row.version == raw[3].position and raw[4].kind == api.Change.DELETE
    call = stub.Watch(api.WatchRequest(table="acct", start_position=p1, start_index=1),
                      timeout=10)
    m = next(m for m in call if m.changes)
    call.cancel()
    assert [(c.position, c.index, c.key.parts[0].int_value) for c in m.changes][:2] == \
        [(p1, 1, 12), places[2] + (1,)]
    db.drop_table("acct")
    assert take(watch, 1)[0].kind == "drop_table"
    for w in (watch, ranged):
        w.close()
    # Bad input: a clear status, the node goes on.
    stub = rpc.ChangeServiceStub(grpc.insecure_channel(cluster.addresses[0]))
    for request, code in ((api.WatchRequest(table="nope", from_now=True),
                           grpc.StatusCode.NOT_FOUND),
                          (api.WatchRequest(table="other", max_changes=10**6),
                           grpc.StatusCode.INVALID_ARGUMENT),
                          (api.WatchRequest(), grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.RpcError) as e:
            next(iter(stub.Watch(request, timeout=5)))
        assert e.value.code() == code, e.value
    db.close()


@pytest.mark.fault
def test_exactly_once_in_order_through_node_kills_and_consumer_kills(
        cluster: Cluster, tmp_path: Path) -> None:
    """Writers upsert and delete while nodes are killed -9 and restarted, and the consumer, a
    process that appends each change with its place to a file, is killed -9 at random and
    started again on its file: what the file holds, with nothing removed, is the log's changes
    of the table in order, each once; replayed from empty it gives the table's final state;
    every acknowledged write is in it with all its rows."""
    db = connect(cluster.addresses, refresh_s=None)
    db.create_table("t", {"id": "int64", "v": "int64"}, primary_key="id")
    stop = threading.Event()
    acked: dict[int, int] = {}  # commit position -> how many rows it wrote
    errors: list[BaseException] = []

    def write(k: int) -> None:
        with connect(cluster.addresses, refresh_s=None) as w:
            rng = random.Random(k)
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    if rng.random() < 0.2:
                        w.delete("t", [rng.randrange(40)])  # (of a missing row: no change)
                    else:
                        rows = [{"id": i, "v": n} for i in rng.sample(range(40), rng.randint(1, 3))]
                        acked[w.upsert("t", rows)] = len(rows)
                except grpc.RpcError:
                    time.sleep(0.05)  # a node died under the call: the helper retried and gave up
                except BaseException as e:
                    errors.append(e)
                    return

    out = tmp_path / "consumer.jsonl"
    log = open(tmp_path / "consumer.log", "ab")  # noqa: SIM115 (closed below)
    consumers: list[subprocess.Popen[bytes]] = []

    def start_consumer() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "tests.harness.consumer",
                                 ",".join(cluster.addresses), "t", str(out)],
                                stdout=log, stderr=log, env=node_env(),
                                cwd=Path(__file__).resolve().parents[2])
        consumers.append(proc)
        return proc

    def lines() -> list[list[Any]]:
        if not out.exists():
            return []
        return [json.loads(x) for x in out.read_bytes().split(b"\n")[:-1]]

    writers = [threading.Thread(target=write, args=(k,), daemon=True) for k in range(3)]
    rng = random.Random(7)
    killer_stop = threading.Event()
    kills: list[str] = []

    def kill_nodes() -> None:
        while not killer_stop.wait(rng.uniform(1.5, 3)):
            victim = rng.choice(cluster.live_nodes)
            victim.kill9()
            kills.append(victim.name)
            victim.restart(wait=True)

    killer = threading.Thread(target=kill_nodes, daemon=True)
    consumer_kills = 0
    try:
        for t in writers:
            t.start()
        killer.start()
        end = time.monotonic() + 20
        consumer = start_consumer()
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.5, 2.0))
            consumer.kill()  # SIGKILL, anywhere: mid-line, mid-stream
            consumer.wait(10)
            consumer_kills += 1
            consumer = start_consumer()
        killer_stop.set()
        killer.join(60)
        stop.set()
        for t in writers:
            t.join(30)
        assert not errors, errors
        # The rest of the stream, up to a last write made after everything else.
        sentinel = db.upsert("t", {"id": 1000, "v": 0})
        acked[sentinel] = 1
        wait_for(lambda: any(x[0] == sentinel for x in lines()), 60,
                 message=lambda: "the consumer to reach the last write:\n"
                 + (tmp_path / "consumer.log").read_text()[-3000:])
    finally:
        killer_stop.set()
        stop.set()
        for proc in consumers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        log.close()
    seen = lines()
    places = [(x[0], x[1]) for x in seen]
    assert places == sorted(places), "out of order"
    assert len(places) == len(set(places)), "a change seen twice"
    assert seen[0][2] == "create_table"  # the first consumer began at the oldest held
    # What a single uninterrupted watch from the start sees is exactly the same.
    whole = take(db.watch("t"), len(seen), timeout_s=60)
    assert [(c.position, c.index) for c in whole] == places
    # Every acknowledged write is there, with as many row changes as it made.
    by_position: dict[int, int] = {}
    for x in seen:
        by_position[x[0]] = by_position.get(x[0], 0) + 1
    missing = [p for p in acked if p not in by_position]
    assert not missing, f"acknowledged commits missing from the stream: {missing[:10]}"
    assert all(by_position[p] == n for p, n in acked.items())
    # Replayed from empty, the stream gives the final state.
    state: dict[int, int] = {}
    for _pos, _idx, kind, key, row in seen:
        if kind == "put":
            state[key[0]] = row["v"]
        elif kind == "delete":
            state.pop(key[0], None)
    assert state == {r["id"]: r["v"] for r in db.scan("t")}
    assert consumer_kills >= 8 and len(kills) >= 3 and len(acked) > 50, (
        consumer_kills, kills, len(acked))
    db.close()


def test_a_hold_keeps_the_log_and_an_expired_one_frees_it(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster("--log-keep", "1", n=1)
    db = connect(cluster.addresses, refresh_s=None)
    db.create_table("t", {"id": "int64"}, primary_key="id")
    held = db.upsert("t", {"id": 1})
    stub = rpc.ChangeServiceStub(grpc.insecure_channel(cluster.addresses[0]))
    stub.Hold(api.HoldRequest(name="consumer-a", position=held, ttl_seconds=3), timeout=5)
    for i in range(2, 30):
        db.upsert("t", {"id": i})
    time.sleep(3.5)  # past --log-keep, several leader cycles: only the hold keeps `held`
    status = db.status()
    assert status.log_oldest_position <= held < status.commit_position
    got = take(db.watch("t", position=held), 3)
    assert got[0].position == held and got[0].key == (1,)
    # Not renewed, the hold ends with its TTL, and the log moves on past it.
    wait_for(lambda: db.status().log_oldest_position > held, 20, message="the log trimmed")
    with pytest.raises(grpc.RpcError) as gone:
        next(iter(db.watch("t", position=held)))
    assert gone.value.code() == grpc.StatusCode.OUT_OF_RANGE
    oldest = re.search(r"oldest position held is (\d+)", gone.value.details() or "")
    assert oldest and int(oldest.group(1)) > held
    # Release ends a hold at once.
    stub.Hold(api.HoldRequest(name="consumer-b", position=db.status().commit_position,
                              ttl_seconds=60), timeout=5)
    assert stub.Release(api.ReleaseRequest(name="consumer-b"), timeout=5).released
    assert not stub.Release(api.ReleaseRequest(name="consumer-b"), timeout=5).released
    db.close()
