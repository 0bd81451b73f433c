"""Replicas of the volume (``shardless replica``), real processes on one host: each owns its own
volume directory, copies the primary online, follows the log, reports its lag; the leader keeps
the log for it; one that lost its place copies again. (Hosts as network namespaces, sync mode and
promotion come in their own tests.)"""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from nodes.admin import format_status
from nodes.up import ReplicaProcess
from shardless import connect
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from storage import open_volume
from tests.harness.cluster import Cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def start_replica(cluster: Cluster, made: list[ReplicaProcess], tmp_path: Path, name: str,
                  mode: str = "async", ttl_s: float = 3) -> ReplicaProcess:
    from nodes.etcdserver import free_port

    r = ReplicaProcess(name, mode=mode, etcd=cluster.etcd_endpoints,
                       volume=tmp_path / name / "volume", port=free_port(),
                       log_path=tmp_path / name / "replica.log", ttl_s=ttl_s)
    made.append(r)
    r.start()
    return r


def status(cluster: Cluster) -> api.StatusResponse:
    with grpc.insecure_channel(cluster.addresses[0]) as ch:
        return rpc.ClusterServiceStub(ch).Status(api.StatusRequest(), timeout=10)


def replica_info(cluster: Cluster, name: str) -> api.ReplicaInfo | None:
    return next((r for r in status(cluster).replicas if r.replica_id == name), None)


def leader_cycle(cluster: Cluster) -> int:
    m = re.match(r"cycle (\d+)", status(cluster).leader_activity)
    return int(m.group(1)) if m else 0


def same_volume(primary: Path, replica: Path) -> tuple[int, int, bool]:
    """Positions of both volumes and whether their replicated key spaces are equal (read as any
    process of the host may, while the processes run)."""
    a, b = open_volume(str(primary), map_size=1 << 30), open_volume(str(replica), map_size=1 << 30)
    try:
        with a.read() as ra, b.read() as rb:
            return (ra.commit_position(), rb.commit_position(),
                    list(ra.replicated_items()) == list(rb.replicated_items()))
    finally:
        a.close()
        b.close()


class Writer:
    """A thread of single-row upserts through every node until stopped."""

    def __init__(self, cluster: Cluster) -> None:
        self.db = connect(cluster.addresses, refresh_s=None)
        self.done = threading.Event()
        self.acked = 0
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.done.is_set():
            try:
                self.db.upsert("t", [{"id": i % 500, "v": f"w{i}"}])
                self.acked += 1
            except Exception as e:  # recorded: the test asserts there were none
                self.errors.append(e)
            i += 1

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(30)
        self.db.close()


def test_an_async_replica_copies_online_follows_and_reports_its_lag(
        cluster: Cluster, replicas: list[ReplicaProcess], tmp_path: Path) -> None:
    db = connect(cluster.addresses, refresh_s=None)
    db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
    db.upsert("t", [{"id": i, "v": "before"} for i in range(2000)])
    with Writer(cluster) as w:
        wait_for(lambda: w.acked > 50, 30, message="writes under way")
        r = start_replica(cluster, replicas, tmp_path, "r1")
        r.wait_serving(60)  # SERVING once caught up, with writes going on throughout
        wait_for(lambda: w.acked > 300, 60, message="more writes while it follows")
        info = replica_info(cluster, "r1")
        assert info is not None and info.mode == "async" and info.caught_up
        # A node's own status (what a lag monitor polls) reports the replica and its lag too,
        # without the per-member etcd reads of the cluster view.
        with grpc.insecure_channel(cluster.addresses[1]) as ch:
            own = rpc.ClusterServiceStub(ch).Status(api.StatusRequest(local_only=True),
                                                    timeout=10)
        assert [r.replica_id for r in own.replicas] == ["r1"] and not own.members, own
        assert own.replicas[0].position > 0 and len(status(cluster).members) == 3
    assert not w.errors, w.errors[:3]
    # The load has stopped: the reported lag goes to zero, and the copy equals the volume.
    wait_for(lambda: (i := replica_info(cluster, "r1")) is not None and i.lag_positions == 0,
             30, message="lag back to zero")
    info = replica_info(cluster, "r1")
    assert info is not None and info.lag_seconds == 0.0
    primary_pos, replica_pos, equal = same_volume(cluster.volume, r.volume)
    assert replica_pos == primary_pos == info.position and equal
    # The replica's own status (`shardless status REPLICA`) says what it is and what it holds.
    with grpc.insecure_channel(r.address) as ch:
        mine = rpc.ClusterServiceStub(ch).Status(api.StatusRequest(), timeout=10)
    assert [x.replica_id for x in mine.replicas] == ["r1"] and not mine.members, mine
    me = mine.replicas[0]
    assert (me.mode, me.caught_up, me.lag_positions) == ("async", True, 0), mine
    assert me.position == mine.commit_position == replica_pos == me.primary_last, mine
    assert mine.volume_id == me.volume_id == info.volume_id != "", mine
    assert mine.epoch >= 1 and mine.primary_volume_id not in ("", mine.volume_id), mine
    text = format_status(mine)
    assert text.startswith("replica r1 at ") and f"holds position {replica_pos};" in text, text
    db.close()


def test_a_replica_resumes_after_kill_and_the_log_is_kept_for_it(
        make_cluster, replicas: list[ReplicaProcess], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With a one-second log retention, a replica killed -9 for longer than that still finds
    its next position when it comes back (the leader kept the log for it until its record
    expired with its lease), and resumes from its own volume."""
    cluster: Cluster = make_cluster("--log-keep", "1", n=2)
    db = connect(cluster.addresses, refresh_s=None)
    db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
    r = start_replica(cluster, replicas, tmp_path, "r2", ttl_s=10)
    r.wait_serving(60)
    db.upsert("t", [{"id": i, "v": "a"} for i in range(100)])
    wait_for(lambda: (i := replica_info(cluster, "r2")) is not None and i.lag_positions == 0,
             30, message="caught up")
    held = replica_info(cluster, "r2").position  # type: ignore[union-attr]
    r.kill()
    for i in range(30):  # commits it misses, older than the retention by the time it is back
        db.upsert("t", [{"id": i, "v": f"b{i}"}])
    # Three leader cycles (one a second) pass: past --log-keep, these records would go but
    # for the replica's hold.
    first = leader_cycle(cluster)
    wait_for(lambda: leader_cycle(cluster) >= first + 3, 15, message="three leader cycles")
    assert status(cluster).log_oldest_position <= held + 1
    r.start()
    r.wait_serving(60)
    wait_for(lambda: (i := replica_info(cluster, "r2")) is not None and i.lag_positions == 0,
             30, message="caught up again")
    assert "holds position" in r.log_tail(400) and "copied" in r.log_tail(400)
    assert r.log_tail(400).count("copied") == 1  # it did not copy again
    assert same_volume(cluster.volume, r.volume)[2]
    db.close()


def test_a_replica_that_lost_its_place_copies_again(
        make_cluster, replicas: list[ReplicaProcess], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Past the log's size bound the oldest records go even though a registered replica needs
    them (the leader says so); that replica, back, is told (OUT_OF_RANGE), throws its copy away,
    copies again and catches up."""
    cluster: Cluster = make_cluster("--log-keep", "0", "--log-max-mb", "0.05", n=1)
    db = connect(cluster.addresses, refresh_s=None)
    db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
    r = start_replica(cluster, replicas, tmp_path, "r3", ttl_s=20)
    r.wait_serving(60)
    held = replica_info(cluster, "r3").position  # type: ignore[union-attr]
    r.kill()  # its record stays until its lease (20 s) runs out: it still needs the log
    for i in range(40):  # ~4 KB per commit: far past the 50 KB bound
        db.upsert("t", [{"id": j, "v": "x" * 30} for j in range(i * 40, i * 40 + 40)])
    wait_for(lambda: status(cluster).log_oldest_position > held + 1, 15,
             message="the log trimmed past the replica")
    assert replica_info(cluster, "r3") is not None  # still registered: the cut was forced
    assert "passed its bounds" in cluster[0].log_tail(200)
    r.start()
    wait_for(lambda: "lost its place" in r.log_tail(400), 30, message="the replica notices")
    r.wait_serving(60)
    wait_for(lambda: (i := replica_info(cluster, "r3")) is not None and i.caught_up
             and i.lag_positions == 0, 60, message="copied again and caught up")
    assert r.log_tail(400).count("copied") == 2
    assert same_volume(cluster.volume, r.volume)[2]
    db.close()


# -- synchronous replicas ------------------------------------------------------------------------


def replica_position(r: ReplicaProcess) -> int:
    """The position the replica process itself says it holds durably."""
    with grpc.insecure_channel(r.address) as ch:
        return rpc.ClusterServiceStub(ch).Status(api.StatusRequest(), timeout=10).commit_position


def in_sync_set(cluster: Cluster, name: str, state: str = "sync") -> bool:
    info = replica_info(cluster, name)
    return info is not None and info.sync_state == state


def test_every_commit_acknowledged_is_on_the_sync_replica(
        cluster: Cluster, replicas: list[ReplicaProcess], tmp_path: Path) -> None:
    """With a synchronous replica, a commit is acknowledged only once the replica holds it:
    asked right after each acknowledgement, the replica's own durable position is never
    behind it."""
    db = connect(cluster.addresses, refresh_s=None)
    db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
    r = start_replica(cluster, replicas, tmp_path, "s1", mode="sync")
    r.wait_serving(60)
    wait_for(lambda: in_sync_set(cluster, "s1"), 15, message="in the synchronous set")
    for i in range(60):
        position = db.upsert("t", [{"id": i % 7, "v": f"v{i}"}])
        assert replica_position(r) >= position, (i, position)
    db.close()


def test_strict_a_frozen_sync_replica_blocks_commits_and_hides_them_from_reads(
        make_cluster, replicas: list[ReplicaProcess], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """--sync-policy strict: while the synchronous replica is frozen, a commit fails with
    UNAVAILABLE (outcome unknown: no NOT_APPLIED) after --sync-timeout, and no read on any node
    returns it; once the replica is back, it holds the commit and reads see it."""
    cluster: Cluster = make_cluster("--sync-policy", "strict", "--sync-timeout", "1", n=2)
    db = connect(cluster.addresses, refresh_s=None)
    db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
    db.upsert("t", [{"id": 1, "v": "old"}])
    r = start_replica(cluster, replicas, tmp_path, "s2", mode="sync", ttl_s=10)
    r.wait_serving(60)
    wait_for(lambda: in_sync_set(cluster, "s2"), 15, message="in the synchronous set")
    rows = [rpc.RowServiceStub(grpc.insecure_channel(a)) for a in cluster.addresses]
    get = api.GetRequest(table="t", key=pb_key(1))
    r.send_signal(signal.SIGSTOP)
    try:
        writes = rpc.RowServiceStub(grpc.insecure_channel(cluster.addresses[0]))
        with pytest.raises(grpc.RpcError) as failed:
            writes.Upsert(api.WriteRowsRequest(table="t", rows=[pb_row(1, "new")],
                                               idempotency_key="k-new"), timeout=10)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "synchronous replica(s) s2" in (failed.value.details() or "")
        assert not has_not_applied(failed.value)
        for stub in rows:  # the commit is durable on the volume, yet no read shows it
            try:
                got = stub.Get(get, timeout=10)
                assert got.row.columns["v"].string_value == "old"
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE and has_not_applied(e)
    finally:
        r.send_signal(signal.SIGCONT)
    wait_for(lambda: rows[1].Get(get, timeout=10).row.columns["v"].string_value == "new", 30,
             message="the commit visible once the replica holds it",
             retry_on=(grpc.RpcError,))
    again = writes.Upsert(api.WriteRowsRequest(table="t", rows=[pb_row(1, "new")],
                                               idempotency_key="k-new"), timeout=10)
    assert replica_position(r) >= again.commit_position  # the retry: the first result, held
    db.close()


def test_demote_a_frozen_sync_replica_is_demoted_and_rejoins_when_caught_up(
        make_cluster, replicas: list[ReplicaProcess], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """--sync-policy demote (the default): a commit waits --sync-timeout for the frozen replica,
    then the replica is demoted (status says so) and commits go on at full speed; thawed, it
    catches up and is synchronous again."""
    cluster: Cluster = make_cluster("--sync-timeout", "1", n=2)
    db = connect(cluster.addresses, refresh_s=None)
    db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
    r = start_replica(cluster, replicas, tmp_path, "s3", mode="sync", ttl_s=10)
    r.wait_serving(60)
    wait_for(lambda: in_sync_set(cluster, "s3"), 15, message="in the synchronous set")
    r.send_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        db.upsert("t", [{"id": 1, "v": "a"}])
        assert time.monotonic() - t0 >= 0.9  # it waited for the replica first
        wait_for(lambda: in_sync_set(cluster, "s3", "demoted"), 5,
                 message="every node sees the demotion")
        t0 = time.monotonic()
        for i in range(20):
            db.upsert("t", [{"id": i, "v": "b"}])
        assert time.monotonic() - t0 < 5  # no more waiting for it
    finally:
        r.send_signal(signal.SIGCONT)
    wait_for(lambda: in_sync_set(cluster, "s3"), 30, message="synchronous again")
    assert "again (it was demoted)" in r.log_tail(200)
    position = db.upsert("t", [{"id": 99, "v": "c"}])
    assert replica_position(r) >= position
    db.close()


def pb_key(i: int):  # type: ignore[no-untyped-def]
    from shardless.client import to_key
    return to_key(i)


def pb_row(i: int, v: str):  # type: ignore[no-untyped-def]
    from shardless.client import to_row
    return to_row({"id": i, "v": v})


def has_not_applied(e: grpc.RpcError) -> bool:
    from grpc_status import rpc_status
    status = rpc_status.from_call(e)  # type: ignore[arg-type]
    return status is not None and any(b"NOT_APPLIED" in d.value for d in status.details)


def test_a_sync_replica_holds_every_acknowledged_commit_through_node_kills(
        cluster: Cluster, replicas: list[ReplicaProcess], tmp_path: Path) -> None:
    """Nodes killed -9 one after the other (the replica's log stream moves to another node)
    while a writer goes on: every commit acknowledged is on the synchronous replica when asked
    right after, and in the end the replica equals the volume."""
    db = connect(cluster.addresses, refresh_s=None)
    db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
    r = start_replica(cluster, replicas, tmp_path, "s4", mode="sync")
    r.wait_serving(60)
    wait_for(lambda: in_sync_set(cluster, "s4"), 15, message="in the synchronous set")
    behind: list[tuple[int, int]] = []
    acked = [0]
    done = threading.Event()

    def write() -> None:
        i = 0
        while not done.is_set():
            try:
                position = db.upsert("t", [{"id": i % 50, "v": f"v{i}"}])
            except grpc.RpcError:
                continue  # a kill in the way: the helper's retries ran out; try the next
            held = replica_position(r)
            if held < position:
                behind.append((position, held))
            acked[0] += 1
            i += 1

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        for victim in (cluster[0], cluster[1]):
            start = acked[0]
            wait_for(lambda s=start: acked[0] > s + 30, 30, message="writes before the kill")
            cluster.kill9(victim)
            start = acked[0]
            wait_for(lambda s=start: acked[0] > s + 30, 60, message="writes after the kill")
            victim.restart()
    finally:
        done.set()
        writer.join(30)
    assert acked[0] > 120 and not behind, behind[:5]
    wait_for(lambda: (i := replica_info(cluster, "s4")) is not None and i.lag_positions == 0,
             30, message="caught up")
    assert same_volume(cluster.volume, r.volume)[2]
    db.close()


def test_a_replica_serves_reads_at_its_position_and_refuses_writes(
        cluster: Cluster, replicas: list[ReplicaProcess], tmp_path: Path) -> None:
    """Reads on the replica's own address: snapshot reads of its copy, read-only transactions,
    read-your-writes with min_position (waits for the position, or UNAVAILABLE NOT_APPLIED past
    the deadline), and writes, DDL and read-write transactions refused with FAILED_PRECONDITION
    naming a primary node."""
    db = connect(cluster.addresses, refresh_s=None)
    db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
    # A half-removed copy left where the copy goes (a process died discarding one): no
    # data.mdb, so a fresh copy takes its place.
    (tmp_path / "reader" / "volume" / "lmdb").mkdir(parents=True)
    (tmp_path / "reader" / "volume" / "lmdb" / "lock.mdb").write_bytes(b"left over")
    r = start_replica(cluster, replicas, tmp_path, "reader")
    r.wait_serving(60)
    with grpc.insecure_channel(r.address) as ch:
        rows = rpc.RowServiceStub(ch)
        for i in range(20):
            position = db.upsert("t", [{"id": i, "v": f"v{i}"}])
            got = rows.Get(api.GetRequest(table="t", key=pb_key(i), min_position=position),
                           timeout=10)
            assert got.found and got.row.columns["v"].string_value == f"v{i}"
            assert got.row.version == position
        batch = rows.BatchGet(api.BatchGetRequest(table="t", keys=[pb_key(i) for i in range(20)],
                                                  min_position=position), timeout=10)
        assert [x.row.columns["id"].int_value for x in batch.results] == list(range(20))
        scanned = [row for m in rows.Scan(api.ScanRequest(table="t", min_position=position),
                                          timeout=10) for row in m.rows]
        assert len(scanned) == 20
        txns = rpc.TransactionServiceStub(ch)
        ex = txns.Execute(api.ExecuteRequest(reads=[api.ReadOp(table="t", key=pb_key(3))],
                                             min_position=position), timeout=10)
        assert ex.reads[0].found
        begun = txns.Begin(api.BeginRequest(read_only=True, min_position=position), timeout=10)
        assert begun.node_id == "reader" and begun.address == r.address
        in_txn = rows.Get(api.GetRequest(table="t", key=pb_key(5),
                                         transaction_id=begun.transaction_id), timeout=10)
        assert in_txn.found and in_txn.row.columns["v"].string_value == "v5"
        with pytest.raises(grpc.RpcError) as ro:  # a read-only transaction stays read-only
            rows.Upsert(api.WriteRowsRequest(table="t", rows=[pb_row(5, "y")],
                                             transaction_id=begun.transaction_id), timeout=10)
        assert ro.value.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                   grpc.StatusCode.FAILED_PRECONDITION)
        txns.Commit(api.CommitRequest(transaction_id=begun.transaction_id), timeout=10)
        with pytest.raises(grpc.RpcError) as ahead:
            rows.Get(api.GetRequest(table="t", key=pb_key(1), min_position=position + 10**6),
                     timeout=1)
        assert ahead.value.code() == grpc.StatusCode.UNAVAILABLE and has_not_applied(ahead.value)
        assert "not yet" in (ahead.value.details() or "")
        refused = [
            lambda: rows.Upsert(api.WriteRowsRequest(table="t", rows=[pb_row(1, "x")]),
                                timeout=10),
            lambda: txns.Begin(api.BeginRequest(), timeout=10),
            lambda: rpc.TableServiceStub(ch).DropTable(api.DropTableRequest(name="t"),
                                                      timeout=10),
        ]
        for call in refused:
            with pytest.raises(grpc.RpcError) as no:
                call()
            assert no.value.code() == grpc.StatusCode.FAILED_PRECONDITION, no.value.details()
            assert "serves reads only" in (no.value.details() or "")
            assert any(a in (no.value.details() or "") for a in cluster.addresses)
    assert db.get("t", 1)["v"] == "v1"  # nothing of the refused writes happened
    with grpc.insecure_channel(cluster.addresses[2]) as ch:  # min_position on a primary node
        rows = rpc.RowServiceStub(ch)
        assert rows.Get(api.GetRequest(table="t", key=pb_key(1), min_position=position),
                        timeout=10).found
        with pytest.raises(grpc.RpcError) as ahead:
            rows.Get(api.GetRequest(table="t", key=pb_key(1), min_position=position + 10**6),
                     timeout=1)
        assert ahead.value.code() == grpc.StatusCode.UNAVAILABLE and has_not_applied(ahead.value)
    db.close()


def test_a_frozen_node_does_not_stall_a_sync_replica(
        make_cluster, replicas: list[ReplicaProcess], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The node the replica reads the log from is frozen (SIGSTOP): its stream says nothing, the
    replica gives it up after a few seconds and reads from another node, so commits through the
    other nodes go on being acknowledged (strict policy, a timeout longer than the stall), each
    held by the replica."""
    cluster: Cluster = make_cluster("--sync-policy", "strict", "--sync-timeout", "15", n=3)
    db = connect(cluster.addresses, refresh_s=None)
    db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
    r = start_replica(cluster, replicas, tmp_path, "s5", mode="sync", ttl_s=10)
    r.wait_serving(60)
    wait_for(lambda: in_sync_set(cluster, "s5"), 15, message="in the synchronous set")
    source = re.findall(r"following the log from (\S+)", r.log_tail(100))[-1]
    frozen = next(n for n in cluster.live_nodes if n.address == source)
    others = connect([a for a in cluster.addresses if a != source], refresh_s=None)
    frozen.pause()
    try:
        t0 = time.monotonic()
        for i in range(10):
            position = others.upsert("t", [{"id": i, "v": "x"}])
            assert replica_position(r) >= position
        assert time.monotonic() - t0 < 12  # never the whole --sync-timeout
    finally:
        frozen.resume()
    # It reads from another node now: found by its stall watch ("reading elsewhere") or by the
    # channel's keepalive giving up on the frozen node first, whichever comes first (both
    # about 3 s; a CI run saw the keepalive win).
    sources = re.findall(r"following the log from (\S+)", r.log_tail(200))
    assert sources[-1] != source, r.log_tail(200)
    others.close()
    db.close()


def _watched(address: str, request: api.WatchRequest, upto: int, timeout_s: float = 30
             ) -> list[tuple[int, int, int, bytes]]:
    """Every change a Watch on ``address`` sends until it has delivered ``upto``: (position,
    index, kind, the change encoded deterministically: a row's map entries in key order, so
    that equal changes compare equal)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = []
        try:
            with grpc.insecure_channel(address) as ch:
                call = rpc.ChangeServiceStub(ch).Watch(request, timeout=timeout_s)
                for m in call:
                    got += [(c.position, c.index, c.kind, c.SerializeToString(deterministic=True))
                            for c in m.changes]
                    if m.position >= upto:
                        call.cancel()
                        return got
            return got
        except grpc.RpcError as e:
            # A replica serves two streams at a time (REPLICA_LIMITS); the one just cancelled
            # may not have given its place back yet: try again, as the helper's watch does.
            if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_replica_serves_the_change_stream_at_its_position(
        cluster: Cluster, replicas: list[ReplicaProcess], tmp_path: Path) -> None:
    """Watch on a replica's own address gives the same changes as on a primary node, from any
    place, and follows new commits as it applies them; Hold and Release there are refused
    naming a primary node (the holds keep the primary's log)."""
    db = connect(cluster.addresses, refresh_s=None)
    db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
    db.upsert("t", [{"id": -1, "v": "before the copy"}])
    r = start_replica(cluster, replicas, tmp_path, "r1")
    r.wait_serving(60)
    copied = db.status().commit_position
    first = db.upsert("t", [{"id": 0, "v": "a"}])
    for i in range(1, 30):
        db.upsert("t", [{"id": i, "v": f"v{i}"}, {"id": i + 100, "v": "w"}])
    db.delete("t", [5])
    last = db.status().commit_position
    # A replica's log begins after its copy: older places are not there (OUT_OF_RANGE names
    # the oldest it holds), as for any place the log no longer holds.
    with pytest.raises(grpc.RpcError) as gone:
        _watched(r.address, api.WatchRequest(table="t", start_position=1), last)
    assert gone.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "oldest position held" in (gone.value.details() or "")
    assert first > copied
    request = api.WatchRequest(table="t", start_position=first, start_index=0)
    on_primary = _watched(cluster.addresses[1], request, last)
    assert len(on_primary) == 1 + 29 * 2 + 1
    wait_for(lambda: replica_info(cluster, "r1") is not None
             and replica_info(cluster, "r1").position >= last, 30, message="r1 caught up")  # type: ignore[union-attr]
    assert _watched(r.address, request, last) == on_primary
    # From the middle of a commit, as on a primary node.
    mid = api.WatchRequest(table="t", start_position=first + 3, start_index=1)
    assert _watched(r.address, mid, last) == _watched(cluster.addresses[0], mid, last)
    # Following: commits made after the stream began arrive, in order, once.
    got: list[tuple[int, int, int, bytes]] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            got.extend(_watched(r.address, api.WatchRequest(table="t", start_position=last + 1),
                                last + 20))
        except BaseException as e:  # recorded: asserted below
            errors.append(e)
        finally:
            done.set()

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    positions = [db.upsert("t", [{"id": 1000 + i, "v": "n"}]) for i in range(25)]
    assert done.wait(30) and not errors, errors
    t.join(5)
    # Every commit up to last + 20 came, in order, once (a message may hold more after it).
    assert [g[0] for g in got] == positions[:len(got)]
    assert len(got) >= len([p for p in positions if p <= last + 20])
    with grpc.insecure_channel(r.address) as ch:
        changes = rpc.ChangeServiceStub(ch)
        for call in (lambda: changes.Hold(api.HoldRequest(name="h", position=first), timeout=10),
                     lambda: changes.Release(api.ReleaseRequest(name="h"), timeout=10)):
            with pytest.raises(grpc.RpcError) as no:
                call()
            assert no.value.code() == grpc.StatusCode.FAILED_PRECONDITION, no.value.details()
            assert "serves reads only" in (no.value.details() or "")
            assert any(a in (no.value.details() or "") for a in cluster.addresses)
    db.close()


def _log_bounds(volume: Path) -> tuple[int, int]:
    store = open_volume(str(volume), map_size=1 << 30)
    try:
        with store.read() as view:
            oldest, last, _ = view.log_bounds()
            return oldest, last
    finally:
        store.close()


def test_a_replica_keeps_its_log_in_bounds_and_what_a_hold_needs(
        cluster: Cluster, replicas: list[ReplicaProcess], tmp_path: Path) -> None:
    """A replica trims its own copy's log by its retention settings (here --log-keep 0: every
    record may go at once), except what a retention hold still needs; released, that goes too,
    and the replica follows on. Without it a replica's volume grows by every commit for ever."""
    from nodes.etcdserver import free_port

    db = connect(cluster.addresses, refresh_s=None)
    db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
    r = ReplicaProcess("r1", mode="async", etcd=cluster.etcd_endpoints,
                       volume=tmp_path / "r1" / "volume", port=free_port(),
                       log_path=tmp_path / "r1" / "replica.log", ttl_s=3,
                       extra_args=("--log-keep", "0"))
    replicas.append(r)
    r.start()
    r.wait_serving(60)
    for i in range(5):  # before the hold: free to go
        db.upsert("t", [{"id": -i, "v": "early"}])
    held = db.status().commit_position + 1
    with grpc.insecure_channel(cluster.addresses[0]) as ch:
        holds = rpc.ChangeServiceStub(ch)
        holds.Hold(api.HoldRequest(name="keep", position=held, ttl_seconds=60), timeout=10)
        last = 0
        for i in range(40):
            last = db.upsert("t", [{"id": i, "v": "x" * 200}])
        wait_for(lambda: _log_bounds(r.volume)[1] >= last, 30, message="r1 caught up")
        # Trimmed up to the hold, not past it.
        wait_for(lambda: _log_bounds(r.volume)[0] == held, 30,
                 message=f"r1's log to start at the held position {held}")
        time.sleep(1.5)  # another trim round or two: the hold still keeps it
        assert _log_bounds(r.volume)[0] == held
        with grpc.insecure_channel(r.address) as rch:  # and its Status says so
            st = rpc.ClusterServiceStub(rch).Status(api.StatusRequest(), timeout=10)
        assert st.log_oldest_position == held and st.log_bytes > 0
        assert _watched(r.address, api.WatchRequest(table="t", start_position=held), last)
        holds.Release(api.ReleaseRequest(name="keep"), timeout=10)
    wait_for(lambda: _log_bounds(r.volume)[0] > held, 30,
             message="r1's log trimmed past the released hold")
    more = db.upsert("t", [{"id": 1000, "v": "after"}])
    wait_for(lambda: _log_bounds(r.volume)[1] >= more, 30, message="r1 follows on")
    assert db.status().commit_position >= more
    # The primary keeps its own log by its own settings (here the defaults: 600 s).
    with grpc.insecure_channel(cluster.addresses[1]) as ch:
        assert _watched(cluster.addresses[1], api.WatchRequest(table="t", start_position=held),
                        last)
    db.close()


def test_a_sync_replica_of_an_empty_volume_joins_without_waiting_for_a_commit(
        cluster: Cluster, replicas: list[ReplicaProcess], tmp_path: Path) -> None:
    """A new cluster with a synchronous replica: before any commit the replica holds all there
    is (position 0), so it is in the synchronous set (and may be promoted) at once; it used to
    stay ``joining`` until the first commit, so a primary lost before one had no failover."""
    assert status(cluster).commit_position == 0
    start_replica(cluster, replicas, tmp_path, "s1", mode="sync").wait_serving(60)
    wait_for(lambda: (replica_info(cluster, "s1") or api.ReplicaInfo()).sync_state == "sync",
             20, message=lambda: f"s1 in the synchronous set: {replica_info(cluster, 's1')}")
    assert status(cluster).commit_position == 0  # nothing committed meanwhile
    with connect(cluster.addresses, refresh_s=None) as db:
        db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
        position = db.upsert("t", [{"id": 1, "v": "a"}])
    info = replica_info(cluster, "s1")
    assert info is not None and info.sync_state == "sync" and info.position >= position
