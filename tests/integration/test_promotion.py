"""Promotion of a replica and fencing of the old primary, with real processes on one host
(``nodes/promotion.py``, ``nodes/epoch.py``): a synchronous replica promoted by command or by
itself holds every acknowledged write; an asynchronous one only with ``--accept-loss``, and the
command names exactly the positions lost; no node on the old volume commits again."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from nodes import faultpoints
from nodes.etcdserver import free_port
from nodes.up import ReplicaProcess
from shardless import certainly_not_applied, connect, to_row
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from storage import open_volume
from tests.harness.cluster import Cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def start_replica(cluster: Cluster, made: list[ReplicaProcess], tmp_path: Path, name: str,
                  mode: str, *extra: str) -> ReplicaProcess:
    r = ReplicaProcess(name, mode=mode, etcd=cluster.etcd_endpoints,
                       volume=tmp_path / name / "volume", port=free_port(),
                       log_path=tmp_path / name / "replica.log", ttl_s=3, extra_args=extra)
    made.append(r)
    r.start()
    return r


def status(address: str) -> api.StatusResponse:
    with grpc.insecure_channel(address) as ch:
        return rpc.ClusterServiceStub(ch).Status(api.StatusRequest(), timeout=10)


def replica_info(cluster: Cluster, name: str) -> api.ReplicaInfo | None:
    return next((r for r in status(cluster.addresses[0]).replicas if r.replica_id == name),
                None)


def promote(cluster: Cluster, replica: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nodes", "promote", replica, "--etcd",
                           cluster.etcd_endpoints, "--ttl", "3", *flags],
                          capture_output=True, text=True, timeout=60)


def serving(address: str) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(address) as ch:
            got = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                       timeout=1)
        return got.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def writes_as_node(address: str) -> bool:
    """Whether ``address`` takes a write now (it is a node of the primary)."""
    try:
        with connect([address], refresh_s=None) as db:
            db.upsert("t", {"id": -1, "v": "probe"})
        return True
    except Exception:
        return False


class Writers:
    """Threads of single-row upserts of fresh keys through the given addresses; each
    acknowledged key is recorded with its commit position."""

    def __init__(self, addresses: Sequence[str], threads: int = 4, base: int = 0) -> None:
        self.addresses = list(addresses)
        self.base = base
        self.done = threading.Event()
        self.acked: dict[int, int] = {}
        self.failed = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(k, threads), daemon=True)
                         for k in range(threads)]

    def _run(self, k: int, step: int) -> None:
        db = connect(self.addresses, refresh_s=None)
        i = self.base + k
        try:
            while not self.done.is_set():
                try:
                    pos = db.upsert("t", {"id": i, "v": f"w{i}"})
                    with self._lock:
                        self.acked[i] = pos
                except Exception:  # the nodes are being killed: not acknowledged, fine
                    self.failed += 1
                    time.sleep(0.01)
                i += step
        finally:
            db.close()

    def __enter__(self) -> Writers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        for t in self._threads:
            t.join(30)


def volume_position(path: Path) -> int:
    """The last position a volume holds, read as any process of the host may."""
    store = open_volume(str(path), map_size=1 << 30)
    try:
        with store.read() as view:
            return view.commit_position()
    finally:
        store.close()


def rows_of(address: str) -> dict[int, str]:
    with connect([address], refresh_s=None) as db:
        return {int(r["id"]): str(r["v"]) for r in db.scan("t")}


def sync_ready(cluster: Cluster, name: str) -> None:
    wait_for(lambda: (i := replica_info(cluster, name)) is not None and i.sync_state == "sync",
             60, message=f"{name} in the synchronous set (state sync)")


def kill_primary(cluster: Cluster) -> None:
    for n in cluster.live_nodes:
        n.kill9()


def with_sync_replica(make_cluster, made: list[ReplicaProcess], tmp_path: Path,  # type: ignore[no-untyped-def]
                      *extra: str) -> tuple[Cluster, ReplicaProcess]:
    """Two nodes with table ``t``, and synchronous replica ``r1`` in state ``sync``."""
    cluster: Cluster = make_cluster(n=2)
    with connect(cluster.addresses, refresh_s=None) as db:
        db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
    r = start_replica(cluster, made, tmp_path, "r1", "sync", *extra)
    r.wait_serving(60)
    sync_ready(cluster, "r1")
    return cluster, r


def old_node_refuses(cluster: Cluster) -> None:
    """A node started again on the old volume exits at once, saying why."""
    old = cluster[0]
    old.start()
    rc = old.wait(30)
    assert rc not in (0, None), f"old node exited {rc}"
    assert "superseded" in old.log_tail(50), old.log_tail(50)


def test_a_sync_replica_promoted_by_command_keeps_every_acknowledged_write(
        make_cluster, replicas: list[ReplicaProcess], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cluster, r = with_sync_replica(make_cluster, replicas, tmp_path, "--no-auto-promote")
    assert status(cluster.addresses[0]).epoch == 1
    with Writers(cluster.addresses) as w:
        wait_for(lambda: len(w.acked) > 300, 60, message="writes under way")
        kill_primary(cluster)  # mid-load: commits in flight are lost unacknowledged
    got = promote(cluster, "r1")
    assert got.returncode == 0, got.stdout + got.stderr
    assert "no acknowledged commit is lost" in got.stdout, got.stdout
    # The replica's process now serves its volume as a node, on its address.
    wait_for(lambda: writes_as_node(r.address), 30, message="r1 takes writes")
    rows = rows_of(r.address)
    missing = sorted(set(w.acked) - set(rows))
    assert not missing, f"{len(missing)} acknowledged writes lost: {missing[:10]}"
    assert all(rows[i] == f"w{i}" for i in w.acked)
    st = status(r.address)
    assert st.epoch == 2 and st.primary_volume_id == st.volume_id
    old_node_refuses(cluster)


def test_a_sync_replica_promotes_itself_when_the_primary_is_lost(
        make_cluster, replicas: list[ReplicaProcess], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cluster, r = with_sync_replica(make_cluster, replicas, tmp_path)
    with Writers(cluster.addresses) as w:
        wait_for(lambda: len(w.acked) > 300, 60, message="writes under way")
        kill_primary(cluster)
        lost_at = time.monotonic()
        w.done.set()
        wait_for(lambda: writes_as_node(r.address), 30, interval_s=0.02,
                 message="r1 promoted itself and takes writes")
        took = time.monotonic() - lost_at
    print(f"primary lost -> first acknowledged write on the promoted replica: {took:.2f} s")
    rows = rows_of(r.address)
    missing = sorted(set(w.acked) - set(rows))
    assert not missing, f"{len(missing)} acknowledged writes lost: {missing[:10]}"
    assert "promoting itself" in r.log_tail(400)
    old_node_refuses(cluster)


def test_the_old_primary_stops_when_a_sync_replica_is_promoted_under_it(
        make_cluster, replicas: list[ReplicaProcess], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The old primary's nodes are alive and writing when the replica is promoted: they stop
    committing and leave (exit code 3); every write they acknowledged is on the new primary,
    and clients go on there."""
    cluster, r = with_sync_replica(make_cluster, replicas, tmp_path, "--no-auto-promote")
    with Writers([*cluster.addresses, r.address]) as w:
        wait_for(lambda: len(w.acked) > 300, 60, message="writes under way")
        got = promote(cluster, "r1")
        assert got.returncode == 0, got.stdout + got.stderr
        for n in cluster.nodes:
            assert n.wait(30) == 3, f"{n.name} did not leave as superseded:\n{n.log_tail(40)}"
        before = len(w.acked)
        wait_for(lambda: len(w.acked) > before + 100, 60,
                 message="writes go on through the promoted replica")
    rows = rows_of(r.address)
    missing = sorted(set(w.acked) - set(rows))
    assert not missing, f"{len(missing)} acknowledged writes lost: {missing[:10]}"
    # No commit reached the old volume after the promotion point that was acknowledged:
    # whatever the old volume holds past the new primary's start was never acknowledged.
    start = status(r.address)
    old_last = volume_position(cluster.volume)
    assert start.epoch == 2
    late = [i for i, pos in w.acked.items() if pos > 0 and i not in rows]
    assert not late
    # The old primary's volume rejoins as a replica in place: its data is set aside whole
    # (it may hold commits past the promotion, never acknowledged), a copy of the new
    # primary's takes its place and follows it.
    again = ReplicaProcess("old", mode="async", etcd=cluster.etcd_endpoints,
                           volume=cluster.volume, port=free_port(),
                           log_path=tmp_path / "old-replica.log", ttl_s=3)
    replicas.append(again)
    again.start()
    again.wait_serving(60)
    with connect([r.address], refresh_s=None) as db:
        pos = db.upsert("t", {"id": 10**9, "v": "after"})

    def follows() -> bool:
        got = next((i for i in status(r.address).replicas if i.replica_id == "old"), None)
        return got is not None and got.position >= pos
    wait_for(follows, 60, message=lambda: "the old volume to follow the new primary:\n"
             + again.log_tail(30))
    assert rows_of(again.address).get(10**9) == "after"
    (aside,) = (cluster.volume / "superseded").iterdir()
    assert aside.name.endswith("-epoch2")
    assert volume_position(aside) == old_last  # the old data, untouched


def test_an_async_replica_is_promoted_only_with_accept_loss_and_the_loss_is_named(
        make_cluster, replicas: list[ReplicaProcess], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An asynchronous replica frozen under load lags; the status reports the lag; after the
    primary is lost, ``promote`` refuses it without ``--accept-loss`` and with it names the
    positions lost: exactly the acknowledged writes the promoted copy lacks."""
    cluster: Cluster = make_cluster(n=2)
    with connect(cluster.addresses, refresh_s=None) as db:
        db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
    b = start_replica(cluster, replicas, tmp_path, "b", "sync", "--no-auto-promote")
    c = start_replica(cluster, replicas, tmp_path, "c", "async")
    b.wait_serving(60)
    c.wait_serving(60)
    sync_ready(cluster, "b")
    with Writers(cluster.addresses) as w0:
        wait_for(lambda: len(w0.acked) > 100, 60, message="writes under way")
    # Frozen (SIGSTOP) once it has reported what it holds, it falls behind the next writes.
    # (A commit of the leader's housekeeping may slip in between; then thaw and try again.)
    for _ in range(10):
        wait_for(lambda: (i := replica_info(cluster, "c")) is not None
                 and i.lag_positions == 0, 30, message="c caught up")
        c.send_signal(19)
        if (i := replica_info(cluster, "c")) is not None and \
                i.position == volume_position(c.volume):
            break
        c.send_signal(18)
    with Writers(cluster.addresses, base=1_000_000) as w:
        wait_for(lambda: len(w.acked) > 200, 60, message="writes while c is frozen")
    w.acked.update(w0.acked)
    # The load has stopped: the status reports c's lag (b is at the head).
    info = replica_info(cluster, "c")
    head = status(cluster.addresses[0]).commit_position
    assert info is not None and info.lag_positions > 0
    assert info.position + info.lag_positions == head
    kill_primary(cluster)
    c.send_signal(18)  # SIGCONT
    refused = promote(cluster, "c")
    assert refused.returncode == 1 and "--accept-loss" in refused.stderr, refused.stderr
    got = promote(cluster, "c", "--accept-loss")
    assert got.returncode == 0, got.stdout + got.stderr
    m = re.search(r"continues after position (\d+)", got.stdout)
    assert m, got.stdout
    held = int(m.group(1))
    # What the status reported before the loss bounds it: records already on their way to c
    # when the primary died may still have arrived.
    assert info.position <= held < head
    expected = f"LOST: positions {held + 1}..{head} ({head - held} commit(s)"
    assert expected in got.stdout, got.stdout
    wait_for(lambda: writes_as_node(c.address), 30, message="c takes writes")
    rows = rows_of(c.address)
    lacking = {i for i in w.acked if i not in rows}
    # Exactly the acknowledged writes at the positions named lost are missing.
    assert lacking == {i for i, pos in w.acked.items() if pos > held}
    assert lacking  # the frozen replica did miss some
    # b held positions c does not: it throws its copy away and copies the new primary.
    wait_for(lambda: "lost its place" in b.log_tail(400), 30, message="b copies anew")
    wait_for(lambda: (i := next((x for x in status(c.address).replicas
                                 if x.replica_id == "b"), None)) is not None
             and i.caught_up and i.lag_positions == 0, 60, message="b follows c")


def stopped(pid: int | None) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP): state T in /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, IndexError):
        return False


def test_a_node_frozen_between_its_commit_and_its_answer_does_not_acknowledge_after_a_promotion(
        make_cluster, replicas: list[ReplicaProcess], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A node stops itself (SIGSTOP, the fault point ``pause-before-answer``) after its write
    transaction and before its answer; meanwhile an asynchronous replica is promoted with
    ``--accept-loss``, which revokes the old nodes' sessions and waits out their TTL. Thawed,
    the node must not acknowledge the write: the client gets UNAVAILABLE that does not say
    "not applied", and the same key retried on the new primary leaves the row there once."""
    # Its peers must not kill it meanwhile (nodes/deathwatch.py): the test is of its waking.
    cluster: Cluster = make_cluster("--no-kill-frozen-peers", n=1)
    with connect(cluster.addresses, refresh_s=None) as db:
        db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
    c = start_replica(cluster, replicas, tmp_path, "c", "async")
    c.wait_serving(60)
    late = cluster.add_node(env={faultpoints.ENV: f"{faultpoints.PAUSE_BEFORE_ANSWER}=late-1"})
    got: list[object] = []

    def write() -> None:
        with grpc.insecure_channel(late.address) as ch:
            try:
                got.append(rpc.RowServiceStub(ch).Upsert(api.WriteRowsRequest(
                    table="t", rows=[to_row({"id": 1, "v": "late"})],
                    idempotency_key="late-1"), timeout=90))
            except grpc.RpcError as e:
                got.append(e)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        wait_for(lambda: stopped(late.pid), 30, message="the node to stop before its answer")
        promoted = promote(cluster, "c", "--accept-loss")
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    finally:
        late.resume()
    writer.join(60)
    assert got, "no answer"
    answer = got[0]
    assert isinstance(answer, grpc.RpcError), \
        f"the old primary acknowledged a commit after the promotion: {answer}"
    assert answer.code() == grpc.StatusCode.UNAVAILABLE, answer
    assert not certainly_not_applied(answer), "a commit that stands was called not applied"
    assert late.wait(30) == 3, late.log_tail(40)  # and it leaves, superseded
    wait_for(lambda: writes_as_node(c.address), 30, message="c takes writes")
    with connect([c.address], refresh_s=None) as db:
        db.upsert("t", {"id": 1, "v": "late"}, idempotency_key="late-1")
        assert [(r["id"], r["v"]) for r in db.scan("t") if r["id"] == 1] == [(1, "late")]


def test_a_promotion_stuck_on_a_lost_replica_is_taken_over_with_force(
        make_cluster, replicas: list[ReplicaProcess], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two synchronous replicas; the primary is lost; r1's promotion begins while r1 is frozen,
    so the record stays ``promoting``. Promoting r2 is refused until ``--force``; with it r2
    becomes the primary holding every acknowledged write, and r1, thawed, never becomes one:
    it follows r2."""
    cluster, r1 = with_sync_replica(make_cluster, replicas, tmp_path, "--no-auto-promote")
    r2 = start_replica(cluster, replicas, tmp_path, "r2", "sync", "--no-auto-promote")
    r2.wait_serving(60)
    sync_ready(cluster, "r2")
    with Writers(cluster.addresses) as w:
        wait_for(lambda: len(w.acked) > 300, 60, message="writes under way")
        kill_primary(cluster)
    r1.send_signal(19)  # SIGSTOP: its promotion cannot finish
    try:
        stuck = promote(cluster, "r1", "--wait", "2")
        assert stuck.returncode == 1 and "did not finish" in stuck.stderr, \
            stuck.stdout + stuck.stderr
        refused = promote(cluster, "r2")
        assert refused.returncode == 1 and "--force" in refused.stderr, refused.stderr
        got = promote(cluster, "r2", "--force")
        assert got.returncode == 0, got.stdout + got.stderr
        assert "no acknowledged commit is lost" in got.stdout, got.stdout
    finally:
        r1.send_signal(18)  # SIGCONT
    wait_for(lambda: writes_as_node(r2.address), 30, message="r2 takes writes")
    rows = rows_of(r2.address)
    missing = sorted(set(w.acked) - set(rows))
    assert not missing, f"{len(missing)} acknowledged writes lost: {missing[:10]}"
    st = status(r2.address)
    assert st.epoch == 3 and st.primary_volume_id == st.volume_id
    # r1 comes back as a replica of r2 (copying anew if it held an unacknowledged tail).
    wait_for(lambda: (i := next((x for x in status(r2.address).replicas
                                 if x.replica_id == "r1"), None)) is not None
             and i.caught_up and i.lag_positions == 0, 90, message="r1 follows r2")
    assert "is now the primary" not in r1.log_tail(2000)
    assert not writes_as_node(r1.address)
